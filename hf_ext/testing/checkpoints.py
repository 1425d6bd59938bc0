"""Tiny, offline checkpoints for the apps' tests, screenshots and Space-export examples (no Hub access)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["save_tiny_jiuge", "save_tiny_paint", "save_tiny_text_vae", "save_tiny_vlm"]


def save_tiny_vlm(path: str | Path, model_type: str = "muffin", seed: int = 0, max_new_tokens: int = 12) -> Path:
    """Save a random tiny Muffin (or VisCPM-Chat, ``model_type="viscpm_chat"``) and its processor to ``path``.

    Its generation config only lets the model emit lower-case word pieces (``Ġ?[a-z]{2,}`` tokens; EOS suppressed),
    each at most once, so a random model still writes ``max_new_tokens`` tokens of readable text that an annotator can correct.
    """
    from hf_ext.testing import tiny_muffin

    model, processor = tiny_muffin(model_type=model_type, seed=seed)
    vocab = processor.tokenizer.get_vocab()
    allowed = {i for token, i in vocab.items() if re.fullmatch(r"Ġ?[a-z]{2,}", token)}
    size = model.config.text_config.vocab_size
    model.generation_config.suppress_tokens = sorted(set(range(size)) - allowed)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.do_sample = False
    model.generation_config.no_repeat_ngram_size = 1  # every word piece at most once: varied text
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


POEMS = [
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "一曲新词酒一杯，去年天气旧亭台。夕阳西下几时回。",
]


def save_tiny_jiuge(path: str | Path, seed: int = 0) -> Path:
    """Save a random tiny Jiuge (GPT-2, 2 layers) and its character tokenizer built from a few classical poems."""
    import torch

    from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM, JiugeTokenizer

    tokenizer = JiugeTokenizer.from_corpus([*POEMS, "登鹳雀楼 春晓 静夜思 五言七绝句律诗对联"])
    torch.manual_seed(seed)
    config = JiugeConfig.from_tokenizer(tokenizer, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    model = JiugeForCausalLM(config).eval()
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_text_vae(path: str | Path, model_type: str = "della", seed: int = 0) -> Path:
    """Save a random tiny DELLA (or TRACE, ``model_type="trace"``) and a byte-level BPE tokenizer to ``path``; its
    generation config keeps to word pieces and ``.`` (as :func:`save_tiny_vlm`), so samples are readable."""
    import torch

    from hf_ext.testing.tokenizers import tiny_bpe_tokenizer

    tokenizer = tiny_bpe_tokenizer(vocab_size=300)
    eos = tokenizer.eos_token_id
    common = dict(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=3 if model_type == "della" else 2,
        n_head=2,
        n_positions=64,
        latent_size=6,
        latent_lmf_rank=2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if model_type == "della":
        from hf_ext.models.della import DellaConfig, DellaForCausalLM

        model = DellaForCausalLM(DellaConfig(**common))
    elif model_type == "trace":
        from hf_ext.models.trace import TraceConfig, TraceForCausalLM

        dot = tokenizer.convert_tokens_to_ids("Ġ.")
        model = TraceForCausalLM(TraceConfig(separator_token_ids=[dot], max_segments=8, **common))
    else:
        raise ValueError(f"model_type must be 'della' or 'trace', got {model_type!r}.")
    with torch.no_grad():  # the residual latent fusion starts at zero: give it weight so latents change the text
        for name, param in model.named_parameters():
            if name.endswith("rank_weight"):
                param.fill_(1.0)
    vocab = tokenizer.get_vocab()
    allowed = {i for token, i in vocab.items() if re.fullmatch(r"Ġ?([a-z]{2,}|\.)", token)}
    model.generation_config.suppress_tokens = sorted(set(range(len(vocab))) - allowed)  # readable random text
    model.generation_config.max_new_tokens = 16
    path = Path(path)
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_paint(path: str | Path, kind: str = "viscpm_paint", seed: int = 0) -> Path:
    """Save a random tiny VisCPM-Paint (or IAP, ``kind="iap"``) pipeline to ``path`` (32 px images)."""
    if kind == "viscpm_paint":
        from hf_ext.testing.diffusion import tiny_viscpm_paint_pipeline

        pipe = tiny_viscpm_paint_pipeline(seed=seed)
    elif kind == "iap":
        from hf_ext.testing.iap import tiny_iap_pipeline

        pipe = tiny_iap_pipeline(seed=seed)
    else:
        raise ValueError(f"kind must be 'viscpm_paint' or 'iap', got {kind!r}.")
    path = Path(path)
    pipe.save_pretrained(path)
    return path
