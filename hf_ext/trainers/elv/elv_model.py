"""``ELVModel``: ELV's explanation generator, explanation-augmented predictor, retriever and explanation bank as one
object that saves, loads and pushes as one repository."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging

from ...models.elv_predictor.modeling_elv_predictor import ELVPredictorModel
from ...utils.io import atomic_write
from .elv_config import ELV_CONFIG_NAME, ELVModelConfig
from .retrieval import ExplanationBank, encode_sentences

__all__ = ["ELVModel"]

logger = logging.get_logger(__name__)


class ELVModel:
    r"""
    ELV ("Towards Interpretable Natural Language Understanding with Explanations as Latent Variables", Zhou, Hu et
    al., NeurIPS 2020) as one object: an explanation generator q_φ(e | x, y) (any seq2seq LM), an
    explanation-augmented predictor p_θ(y | x, E) ([`ELVPredictorModel`] around any encoder), a frozen sentence
    encoder for retrieval and the explanation bank.

    On disk (and on the Hub) it is one folder::

        elv_config.json                  # ELVModelConfig
        generator/                       # AutoModelForSeq2SeqLM + its tokenizer
        predictor/                       # ELVPredictorModel + its tokenizer
        retriever/                       # AutoModel + its tokenizer (sentence encoder)
        explanation_bank.json            # explanation texts, source sentences, ids, origins, labels
        explanation_bank.safetensors     # unit-norm source-sentence embeddings

    Args:
        generator (`PreTrainedModel`): a sequence-to-sequence LM (T5, BART, ...).
        generator_tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        predictor (`ELVPredictorModel`): the explanation-augmented predictor.
        predictor_tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        config (`ELVModelConfig`): inference settings (label names, K, templates, lengths).
        retriever (`PreTrainedModel`, *optional*): sentence encoder for retrieval (official: Sentence-BERT
            ``bert-base-nli-mean-tokens``). Defaults to a frozen copy of the predictor's initial encoder.
        retriever_tokenizer (`PreTrainedTokenizerBase`, *optional*): its tokenizer (defaults to a copy of the
            predictor's).
        bank (`ExplanationBank`, *optional*): the explanation bank (empty by default; the trainer fills it).
    """

    def __init__(
        self,
        generator: PreTrainedModel,
        generator_tokenizer: PreTrainedTokenizerBase,
        predictor: ELVPredictorModel,
        predictor_tokenizer: PreTrainedTokenizerBase,
        config: ELVModelConfig,
        retriever: PreTrainedModel | None = None,
        retriever_tokenizer: PreTrainedTokenizerBase | None = None,
        bank: ExplanationBank | None = None,
    ):
        if not getattr(generator.config, "is_encoder_decoder", False):
            raise ValueError(
                f"generator must be a sequence-to-sequence LM (config.is_encoder_decoder=True); got "
                f"{type(generator).__name__}."
            )
        if not isinstance(predictor, ELVPredictorModel):
            raise ValueError(
                f"predictor must be an ELVPredictorModel, got {type(predictor).__name__}; wrap an encoder with "
                "ELVPredictorModel.from_encoder(encoder, num_labels=...)."
            )
        if predictor.config.num_labels != config.num_labels:
            raise ValueError(
                f"predictor.config.num_labels={predictor.config.num_labels} but config.label_names has "
                f"{config.num_labels} names."
            )
        for name, tok in (("generator_tokenizer", generator_tokenizer), ("predictor_tokenizer", predictor_tokenizer)):
            if tok.pad_token is None:
                raise ValueError(f"{name} has no pad_token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token).")
        self.generator = generator
        self.generator_tokenizer = generator_tokenizer
        self.predictor = predictor
        self.predictor_tokenizer = predictor_tokenizer
        self.config = config
        if retriever is None:
            retriever = copy.deepcopy(predictor.encoder)
            retriever_tokenizer = copy.deepcopy(predictor_tokenizer)
        elif retriever_tokenizer is None:
            raise ValueError("retriever_tokenizer is required when a retriever is given.")
        self.retriever = retriever.eval().requires_grad_(False)
        self.retriever_tokenizer = retriever_tokenizer
        self.bank = bank if bank is not None else ExplanationBank()

    # ---- input formatting -----------------------------------------------------------------------------------
    def add_entity_markers(self) -> None:
        """Add the entity marker strings as special tokens of the predictor's tokenizer (resizing its embeddings)
        and record the subject/object start ids in the predictor config (for ``pooling="entity_markers"``)."""
        tok = self.predictor_tokenizer
        new = [m for m in self.config.entity_markers if m not in tok.get_vocab()]
        if new:
            tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
            self.predictor.encoder.resize_token_embeddings(len(tok))
        self.predictor.config.subj_token_id = tok.convert_tokens_to_ids(self.config.entity_markers[0])
        self.predictor.config.obj_token_id = tok.convert_tokens_to_ids(self.config.entity_markers[2])

    def format_example(self, example: Mapping[str, Any]) -> str:
        """The input string of an ELV-format example: entity markers inserted around the subject/object spans
        (relation extraction) or the aspect joined to the sentence (aspect sentiment)."""
        text = example["text"]
        spans = [example.get(k, -1) for k in ("subj_start", "subj_end", "obj_start", "obj_end")]
        if all(s is not None and s >= 0 for s in spans):
            s0, s1, o0, o1 = spans
            if not (0 <= s0 < s1 <= len(text) and 0 <= o0 < o1 <= len(text)) or (s0 < o1 and o0 < s1):
                raise ValueError(f"Invalid or overlapping entity spans {spans} for text {text!r}.")
            m = self.config.entity_markers
            # (position, is_opening, marker), inserted right to left so earlier offsets stay valid; at a shared
            # position the opening marker goes in first so that the closing one ends up before it.
            inserts = sorted([(s0, 1, m[0]), (s1, 0, m[1]), (o0, 1, m[2]), (o1, 0, m[3])], reverse=True)
            for pos, is_open, marker in inserts:
                text = f"{text[:pos]}{marker} {text[pos:]}" if is_open else f"{text[:pos]} {marker}{text[pos:]}"
        aspect = example.get("aspect")
        if aspect:
            text = self.config.aspect_template.format(aspect=aspect, text=text)
        return text

    def generator_source(self, text: str, label: int) -> str:
        """The generator's source string for input `text` and label id `label`."""
        return self.config.generator_source_template.format(text=text, label=self.config.label_names[label])

    # ---- the three parts at work ----------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Unit-norm sentence embeddings of `texts` from the retriever."""
        return encode_sentences(
            texts, self.retriever, self.retriever_tokenizer, batch_size, self.config.retriever_max_length
        )

    @torch.no_grad()
    def generate_explanations(
        self, texts: Sequence[str], labels: Sequence[int], batch_size: int = 16, **generate_kwargs
    ) -> list[str]:
        """Explanations from the generator for each (input, label id) pair (greedy unless configured otherwise)."""
        gen, tok = self.generator, self.generator_tokenizer
        was_training = gen.training
        gen.eval()
        device = next(gen.parameters()).device
        kwargs = {
            "max_new_tokens": self.config.max_target_length,
            "num_beams": self.config.generation_num_beams,
            "do_sample": False,
            **generate_kwargs,
        }
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            sources = [
                self.generator_source(t, int(y))
                for t, y in zip(texts[start : start + batch_size], labels[start : start + batch_size])
            ]
            enc = tok(
                sources, padding=True, truncation=True, max_length=self.config.max_source_length, return_tensors="pt"
            ).to(device)
            enc.pop("token_type_ids", None)
            ids = gen.generate(**enc, **kwargs)
            out += [s.strip() for s in tok.batch_decode(ids, skip_special_tokens=True)]
        gen.train(was_training)
        return out

    def encode_predictor_inputs(
        self, texts: Sequence[str], explanations: Sequence[Sequence[str]], explanation_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenise each input with each of its explanations into `(batch, K, seq_len)` tensors for the predictor."""
        if len(texts) != len(explanations):
            raise ValueError(f"Got {len(texts)} texts but {len(explanations)} explanation lists.")
        k = max((len(e) for e in explanations), default=1)
        firsts, seconds = [], []
        for text, expl in zip(texts, explanations):
            padded = list(expl) + [""] * (k - len(expl))
            firsts += [text] * k
            seconds += padded
        enc = self.predictor_tokenizer(
            firsts,
            seconds,
            padding=True,
            truncation="longest_first",
            max_length=self.config.max_seq_length,
            return_tensors="pt",
        )
        batch = {key: v.reshape(len(texts), k, -1) for key, v in enc.items()}
        if explanation_mask is None:
            explanation_mask = torch.tensor([[i < len(e) for i in range(k)] for e in explanations], dtype=torch.long)
        batch["explanation_mask"] = explanation_mask.long()
        return batch

    def retrieve(
        self, texts: Sequence[str], k: int | None = None, query_ids: Sequence[int] | None = None, batch_size: int = 32
    ) -> tuple[list[list[str]], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The explanations of the `k` bank entries nearest to each text.

        Returns:
            `(explanations, indices, similarities, mask)`: per text a list of the valid retrieved explanations, and the
            `(len(texts), k)` tensors of :meth:`ExplanationBank.retrieve`.
        """
        k = k or self.config.num_explanations
        idx, sims, mask = self.bank.retrieve(self.embed(texts, batch_size), k, query_ids)
        expl = [[self.bank.explanations[int(i)] for i, m in zip(row, mrow) if m] for row, mrow in zip(idx, mask)]
        return expl, idx, sims, mask

    def predict_proba(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Class probabilities p_θ(y | x, E) with E = the K explanations retrieved from the bank (test-time rule)."""
        expl, *_ = self.retrieve(texts, batch_size=batch_size)
        return self.predict_proba_with(texts, expl, batch_size)

    @torch.no_grad()
    def predict_proba_with(
        self, texts: Sequence[str], explanations: Sequence[Sequence[str]], batch_size: int = 16
    ) -> torch.Tensor:
        """Class probabilities p_θ(y | x, E) for given explanation lists E (one list per text)."""
        pred = self.predictor
        was_training = pred.training
        pred.eval()
        device = next(pred.parameters()).device
        probs = []
        for start in range(0, len(texts), batch_size):
            batch = self.encode_predictor_inputs(
                texts[start : start + batch_size], explanations[start : start + batch_size]
            )
            logits = pred(**{k: v.to(device) for k, v in batch.items()}).logits
            probs.append(torch.softmax(logits.float(), -1).cpu())
        pred.train(was_training)
        return torch.cat(probs) if probs else torch.zeros(0, self.config.num_labels)

    def predict(self, texts: Sequence[str], batch_size: int = 16) -> list[str]:
        """Predicted label names."""
        ids = self.predict_proba(texts, batch_size).argmax(-1).tolist()
        return [self.config.label_names[i] for i in ids]

    def explain(self, texts: Sequence[str], labels: Sequence[int] | None = None, batch_size: int = 16) -> list[str]:
        """Explanations generated for `labels` (default: the predicted labels), as the paper displays them."""
        if labels is None:
            labels = self.predict_proba(texts, batch_size).argmax(-1).tolist()
        return self.generate_explanations(texts, labels, batch_size)

    def to(self, device: torch.device | str) -> ELVModel:
        for part in (self.generator, self.predictor, self.retriever):
            part.to(device)
        return self

    # ---- persistence ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the whole model (see the class docstring for the layout); weights as safetensors."""
        os.makedirs(save_directory, exist_ok=True)
        for sub, model, tok in (
            ("generator", self.generator, self.generator_tokenizer),
            ("predictor", self.predictor, self.predictor_tokenizer),
            ("retriever", self.retriever, self.retriever_tokenizer),
        ):
            path = os.path.join(save_directory, sub)
            model.save_pretrained(path)
            tok.save_pretrained(path)
        self.bank.save(save_directory)
        with atomic_write(os.path.join(save_directory, ELV_CONFIG_NAME), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **model_kwargs,
    ) -> ELVModel:
        """Load an [`ELVModel`] from a local folder or a Hub repository id (downloaded with ``snapshot_download``).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a folder written by :meth:`save_pretrained` or
                the id of a Hub repository holding one.
            revision, token, cache_dir, local_files_only: passed to ``huggingface_hub.snapshot_download``.
            model_kwargs: passed to each part's ``from_pretrained`` (e.g. ``dtype=torch.float32``).
        """
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(
                repo_id=path,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        config_file = os.path.join(path, ELV_CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is not an ELV model: {ELV_CONFIG_NAME} is missing (expected "
                "generator/, predictor/, retriever/ and the explanation bank next to it)."
            )
        with open(config_file, encoding="utf-8") as f:
            config = ELVModelConfig.from_dict(json.load(f))
        return cls(
            generator=AutoModelForSeq2SeqLM.from_pretrained(os.path.join(path, "generator"), **model_kwargs),
            generator_tokenizer=AutoTokenizer.from_pretrained(os.path.join(path, "generator")),
            predictor=ELVPredictorModel.from_pretrained(os.path.join(path, "predictor"), **model_kwargs),
            predictor_tokenizer=AutoTokenizer.from_pretrained(os.path.join(path, "predictor")),
            retriever=AutoModel.from_pretrained(os.path.join(path, "retriever"), **model_kwargs),
            retriever_tokenizer=AutoTokenizer.from_pretrained(os.path.join(path, "retriever")),
            config=config,
            bank=ExplanationBank.load(path),
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload ELV model",
        create_pr: bool = False,
    ) -> Any:
        """Upload the whole model as one Hub repository (``HfApi.create_repo`` + ``HfApi.upload_folder``).

        A model card (``README.md``, from ``model_cards/elv.md``: the paper, how to load, the label set) is written
        unless the saved folder already has one. Returns the ``CommitInfo`` of the upload.
        """
        from huggingface_hub import HfApi

        from ...hub.cards import create_model_card

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory(prefix="elv_push_") as tmp:
            self.save_pretrained(tmp)
            if not os.path.exists(os.path.join(tmp, "README.md")):
                create_model_card(
                    "elv",
                    model_id=repo_id,
                    how_to_load=(
                        "from hf_ext.trainers.elv import ELVModel\n\n"
                        f'model = ELVModel.from_pretrained("{repo_id}")\n'
                        'model.predict_proba(["an input sentence"])'
                    ),
                    description=f"Labels: {', '.join(map(str, self.config.label_names))}.",
                ).save(os.path.join(tmp, "README.md"))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
                create_pr=create_pr,
            )
