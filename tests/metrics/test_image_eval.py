"""Offline evaluation helpers: CLIP score (transformers 5), FID with a user-given extractor."""

import numpy as np
import pytest
import torch
from scipy import linalg
from transformers import (
    BertTokenizer,
    ChineseCLIPConfig,
    ChineseCLIPImageProcessor,
    ChineseCLIPModel,
    ChineseCLIPProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
)

from hf_ext.metrics.image_eval import CLIPImageFeatureExtractor, clip_score, frechet_distance
from hf_ext.testing import ZH_CHARS, tiny_clip_tokenizer

VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 2}  # fmt: skip
IMAGE_PROC = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}


@pytest.fixture(scope="module")
def clip():
    tok = tiny_clip_tokenizer()
    torch.manual_seed(0)
    text = {"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}  # fmt: skip
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=8)).eval()
    return model, CLIPProcessor(image_processor=CLIPImageProcessor(**IMAGE_PROC), tokenizer=tok)


def images(n, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.random((n, 32, 32, 3)) * 0.6 + shift, 0, 1).astype(np.float32)


def reference_clip_score(model, processor, imgs, texts):
    uint8 = [(torch.from_numpy(i).permute(2, 0, 1) * 255).round().to(torch.uint8) for i in imgs]
    inputs = processor(text=texts, images=uint8, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)  # the full forward's embeddings, not get_*_features
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    return max(100 * (img * txt).sum(-1).mean().item(), 0.0)


def test_clip_score_matches_formula(clip):
    model, processor = clip
    imgs, texts = images(3), ["a red cat", "a blue dog", "a bird"]
    got = clip_score(imgs, texts, model, processor)
    assert got == pytest.approx(reference_clip_score(model, processor, imgs, texts), abs=1e-3)
    # the same score from PIL images and from [N, 3, H, W] tensors
    from PIL import Image

    pil = [Image.fromarray((i * 255).round().astype(np.uint8)) for i in imgs]
    assert clip_score(pil, texts, model, processor) == pytest.approx(got, abs=1e-4)
    assert clip_score(torch.from_numpy(imgs).permute(0, 3, 1, 2), texts, model, processor) == pytest.approx(
        got, abs=1e-4
    )
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(imgs, texts[:2], model, processor)


def test_chinese_clip_score():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ZH_CHARS])}
    tok = BertTokenizer(vocab=vocab, model_max_length=32)
    torch.manual_seed(0)
    text = {"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 64}  # fmt: skip
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=VISION, projection_dim=8)).eval()
    processor = ChineseCLIPProcessor(image_processor=ChineseCLIPImageProcessor(**IMAGE_PROC), tokenizer=tok)
    imgs, texts = images(2, seed=1), ["一只红色的猫", "蓝色的狗"]
    got = clip_score(imgs, texts, model, processor)
    assert got == pytest.approx(reference_clip_score(model, processor, imgs, texts), abs=1e-3)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_frechet_distance_matches_scipy(clip):
    model, processor = clip
    extractor = CLIPImageFeatureExtractor(model, processor)
    real, fake = images(24, seed=0), images(24, seed=1, shift=0.3)
    got = frechet_distance(real, fake, extractor, batch_size=10)
    with torch.no_grad():
        fr = extractor(torch.from_numpy(real).permute(0, 3, 1, 2)).double().numpy()
        ff = extractor(torch.from_numpy(fake).permute(0, 3, 1, 2)).double().numpy()
    assert got == pytest.approx(scipy_fid(fr, ff), rel=1e-3, abs=1e-4)
    assert frechet_distance(real, real, extractor) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="at least two"):
        frechet_distance(real[:1], fake, extractor)


def test_evaluate_module_wrapper(clip):
    import evaluate
    from PIL import Image

    import hf_ext.metrics.image_eval as module

    model, processor = clip
    imgs, texts = images(2), ["a red cat", "a blue dog"]
    pil = [Image.fromarray((i * 255).round().astype(np.uint8)) for i in imgs]
    metric = evaluate.load(module.__file__)
    result = metric.compute(predictions=pil, references=texts, model=model, processor=processor)
    assert result["clip_score"] == pytest.approx(clip_score(pil, texts, model, processor), abs=1e-4)


def test_metrics_import_no_pipeline_or_trainer():
    """Arrows run one way: no module of hf_ext.metrics imports the diffusion pipelines or the trainers."""
    import ast
    from pathlib import Path

    import hf_ext.metrics

    forbidden = ("pipelines", "trainers")
    bad = []
    for path in sorted(Path(hf_ext.metrics.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.lstrip(".").split(".")
                absolute = parts[0] == "hf_ext" and len(parts) > 1 and parts[1] in forbidden
                relative = name.startswith("..") and parts[0] in forbidden
                if absolute or relative:
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
    assert bad == []
