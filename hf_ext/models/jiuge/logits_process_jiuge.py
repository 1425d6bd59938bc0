"""Constrained decoding that makes any Jiuge model follow a poem form exactly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from transformers import LogitsProcessor
from transformers.utils import logging

from ...utils.poetry_forms import PUNCTUATION, PoemForm

logger = logging.get_logger(__name__)

__all__ = ["PoemFormLogitsProcessor"]


class PoemFormLogitsProcessor(LogitsProcessor):
    r"""A `LogitsProcessor` that guarantees the line lengths, punctuation and number of lines of a poem form.

    The body is everything generated after the last ``[BODY]`` token of each row. At every step the processor reads
    the body so far, works out which line it is in and how many characters that line already has, and keeps only
    the tokens the form allows next:

    * inside a line: Chinese characters only (``char_token_ids``);
    * at the end of line ``i``: only the marks in ``form.punctuation[i]``;
    * after the last line: only ``[EOS]``.

    Everything else gets ``-inf``. Because transformers applies custom processors before temperature / top-k /
    top-p, sampling and beam search both stay inside the form. Give ``generate`` at least
    ``form.body_length + 1`` new tokens (``write_poem`` does).

    Args:
        forms (`PoemForm` or `Sequence[PoemForm]`):
            One form for every row, or one per prompt; with ``num_return_sequences=k`` each prompt's form is
            repeated for its ``k`` rows (the batch size must be a multiple of ``len(forms)``).
        body_token_id (`int`): id of ``[BODY]``.
        eos_token_id (`int`): id of ``[EOS]``.
        char_token_ids (`Iterable[int]`): ids a line may contain (``JiugeTokenizer.hanzi_token_ids()``).
        punctuation_token_ids (`Mapping[str, int]`): punctuation mark -> id, for every mark of ``PUNCTUATION``.
        pad_token_id (`int`, *optional*): allowed together with ``[EOS]`` once a row has finished.

    Example:

    ```python
    >>> processor = PoemFormLogitsProcessor.from_tokenizer(BUILTIN_FORMS["五言绝句"], tokenizer)
    >>> model.generate(**prompt, logits_processor=[processor], max_new_tokens=21)
    ```
    """

    def __init__(
        self,
        forms: PoemForm | Sequence[PoemForm],
        body_token_id: int,
        eos_token_id: int,
        char_token_ids: Iterable[int],
        punctuation_token_ids: Mapping[str, int],
        pad_token_id: int | None = None,
    ):
        self.forms = [forms] if isinstance(forms, PoemForm) else list(forms)
        if not self.forms or not all(isinstance(f, PoemForm) for f in self.forms):
            raise ValueError("forms must be a PoemForm or a non-empty sequence of PoemForm.")
        missing = [m for f in self.forms for marks in f.punctuation for m in marks if m not in punctuation_token_ids]
        if missing:
            raise ValueError(f"punctuation_token_ids has no id for {sorted(set(missing))}; map every mark to its id.")
        self.body_token_id = int(body_token_id)
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.char_token_ids = torch.tensor(sorted(set(int(i) for i in char_token_ids)), dtype=torch.long)
        if self.char_token_ids.numel() == 0:
            raise ValueError("char_token_ids is empty: the vocabulary has no Chinese character to write lines with.")
        self.punctuation_token_ids = {m: int(i) for m, i in punctuation_token_ids.items()}
        self._punct_ids = torch.tensor(sorted(set(self.punctuation_token_ids.values())), dtype=torch.long)

    @classmethod
    def from_tokenizer(cls, forms: PoemForm | Sequence[PoemForm], tokenizer) -> PoemFormLogitsProcessor:
        """Build the processor with the ids of a :class:`JiugeTokenizer`."""
        return cls(
            forms,
            body_token_id=tokenizer.body_token_id,
            eos_token_id=tokenizer.eos_token_id,
            char_token_ids=tokenizer.hanzi_token_ids(),
            punctuation_token_ids={m: tokenizer.convert_tokens_to_ids(m) for m in PUNCTUATION},
            pad_token_id=tokenizer.pad_token_id,
        )

    def _form_for_row(self, row: int, batch_size: int) -> PoemForm:
        if len(self.forms) == 1:
            return self.forms[0]
        if batch_size % len(self.forms):
            raise ValueError(
                f"PoemFormLogitsProcessor has {len(self.forms)} forms but the batch has {batch_size} rows; the rows "
                "must be a multiple of the forms (one form per prompt)."
            )
        return self.forms[row // (batch_size // len(self.forms))]

    def allowed_token_ids(self, body: Sequence[int], form: PoemForm) -> list[int] | torch.Tensor:
        """The ids allowed after the generated ``body`` (token ids after ``[BODY]``) under ``form``."""
        finished = [self.eos_token_id] + ([self.pad_token_id] if self.pad_token_id is not None else [])
        punct = set(self._punct_ids.tolist())
        line, chars = 0, 0
        for tok in body:
            if tok == self.eos_token_id or (self.pad_token_id is not None and tok == self.pad_token_id):
                return finished
            if tok in punct:
                line, chars = line + 1, 0
            else:
                chars += 1
        if line >= form.num_lines:
            return [self.eos_token_id]
        if chars < form.line_lengths[line]:
            return self.char_token_ids
        # The line is full (a body produced elsewhere may even overshoot): close it.
        return [self.punctuation_token_ids[m] for m in form.punctuation[line]]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch_size, vocab = scores.shape
        mask = torch.ones_like(scores, dtype=torch.bool)  # True = forbidden
        for b in range(batch_size):
            row = input_ids[b]
            starts = (row == self.body_token_id).nonzero()
            if starts.numel() == 0:
                raise ValueError(
                    f"row {b} of input_ids has no [BODY] token (id {self.body_token_id}); prompts must end with "
                    "[BODY], as produced by format_sample(form, title)."
                )
            body = row[int(starts[-1]) + 1 :].tolist()
            allowed = self.allowed_token_ids(body, self._form_for_row(b, batch_size))
            allowed = torch.as_tensor(allowed, dtype=torch.long, device=scores.device)
            mask[b, allowed[allowed < vocab]] = False
        return scores.masked_fill(mask, float("-inf"))
