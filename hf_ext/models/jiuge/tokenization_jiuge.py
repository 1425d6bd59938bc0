"""Jiuge's character-level tokenizer and unified sample format.

Every sample, whatever its form, is written the same way (Hu & Sun, LREC 2020, Fig. 1: form + title + body)::

    [FORM]五言绝句[TITLE]登鹳雀楼[BODY]白日依山尽，黄河入海流。欲穷千里目，更上一层楼。[EOS]

The exact separators of the paper could not be read (abstract only); these special tokens are a reconstruction.
One Chinese character or punctuation mark is one token, so a form's line lengths are token counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast
from transformers.utils import logging

from ...utils.poetry_forms import PUNCTUATION

logger = logging.get_logger(__name__)

__all__ = [
    "JiugeTokenizer",
    "format_sample",
    "SPECIAL_TOKENS",
    "FORM_TOKEN",
    "TITLE_TOKEN",
    "BODY_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
]

FORM_TOKEN = "[FORM]"
TITLE_TOKEN = "[TITLE]"
BODY_TOKEN = "[BODY]"
EOS_TOKEN = "[EOS]"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, EOS_TOKEN, FORM_TOKEN, TITLE_TOKEN, BODY_TOKEN)


def format_sample(form: str, title: str, body: str | None = None) -> str:
    """The unified sample text; with ``body=None`` the prompt that ends with ``[BODY]`` (for generation).

    Whitespace is removed from all three fields (it carries no meaning in classical poetry and the tokenizer
    drops it anyway). Raises a `ValueError` when ``form`` is empty or a field contains a special token.
    """
    form, title = "".join(str(form).split()), "".join(str(title).split())
    if not form:
        raise ValueError("form is empty; pass a form name such as '五言绝句' or a 词牌 such as '浣溪沙'.")
    for name, value in (("form", form), ("title", title), ("body", body or "")):
        for tok in SPECIAL_TOKENS:
            if tok in value:
                raise ValueError(f"{name} {value!r} contains the special token {tok}; remove it.")
    text = f"{FORM_TOKEN}{form}{TITLE_TOKEN}{title}{BODY_TOKEN}"
    if body is not None:
        text += "".join(body.split()) + EOS_TOKEN
    return text


class JiugeTokenizer(PreTrainedTokenizerFast):
    """A character-level `PreTrainedTokenizerFast`: each non-space character is a token of a ``WordLevel`` vocabulary.

    Build one from a corpus with :meth:`from_corpus`; save and reload it with ``save_pretrained`` /
    ``AutoTokenizer.from_pretrained`` like any fast tokenizer. Unknown characters map to ``[UNK]``.

    The special tokens are ``[PAD]``, ``[UNK]``, ``[EOS]`` (also used as BOS) and the three field markers
    ``[FORM]``, ``[TITLE]``, ``[BODY]`` of the unified sample format (see :func:`format_sample`).
    """

    # No custom ``__init__``: transformers then loads ``tokenizer.json`` as saved instead of rebuilding a BPE model.
    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def from_corpus(
        cls,
        texts: Iterable[str],
        min_frequency: int = 1,
        max_vocab_size: int | None = None,
    ) -> JiugeTokenizer:
        """Build the vocabulary from the characters of ``texts``.

        Args:
            texts (`Iterable[str]`): corpus texts (titles, bodies, form names); whitespace is ignored.
            min_frequency (`int`, *optional*, defaults to 1): characters seen fewer times become ``[UNK]``.
            max_vocab_size (`int`, *optional*): keep at most this many tokens (special tokens and the
                punctuation marks always included), most frequent characters first.

        The six special tokens get ids 0–5 (``[PAD]`` = 0), then the punctuation marks, then the characters by
        decreasing frequency (ties broken by code point, so the vocabulary is deterministic).
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}.")
        counts: Counter[str] = Counter()
        for text in texts:
            for tok in SPECIAL_TOKENS:
                text = text.replace(tok, " ")
            counts.update(ch for ch in text if not ch.isspace())
        vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for mark in PUNCTUATION:
            vocab.setdefault(mark, len(vocab))
        ranked = sorted(
            (c for c in counts if counts[c] >= min_frequency and c not in vocab), key=lambda c: (-counts[c], c)
        )
        if max_vocab_size is not None:
            if max_vocab_size < len(vocab):
                raise ValueError(f"max_vocab_size={max_vocab_size} is smaller than the {len(vocab)} reserved tokens.")
            ranked = ranked[: max_vocab_size - len(vocab)]
        for ch in ranked:
            vocab[ch] = len(vocab)

        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
        # Whitespace separates nothing in Chinese: drop it, then cut every remaining character out on its own.
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
        )
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens(list(SPECIAL_TOKENS))
        tokenizer = cls(
            tokenizer_object=backend,
            eos_token=EOS_TOKEN,
            bos_token=EOS_TOKEN,
            pad_token=PAD_TOKEN,
            unk_token=UNK_TOKEN,
        )
        logger.info("Built a Jiuge tokenizer with %d tokens from %d distinct characters.", len(vocab), len(counts))
        return tokenizer

    # The field markers, as ids, for the model config and the logits processor.
    @property
    def form_token_id(self) -> int:
        return self.convert_tokens_to_ids(FORM_TOKEN)

    @property
    def title_token_id(self) -> int:
        return self.convert_tokens_to_ids(TITLE_TOKEN)

    @property
    def body_token_id(self) -> int:
        return self.convert_tokens_to_ids(BODY_TOKEN)

    def punctuation_token_ids(self, marks: str = PUNCTUATION) -> list[int]:
        """Ids of the given punctuation marks (each is always in the vocabulary)."""
        return [self.convert_tokens_to_ids(m) for m in marks]

    def hanzi_token_ids(self) -> list[int]:
        """Ids of the vocabulary entries that are single Chinese characters (what a line may contain)."""
        from ...utils.poetry_forms import is_hanzi

        return sorted(i for tok, i in self.get_vocab().items() if is_hanzi(tok))
