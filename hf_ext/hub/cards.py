"""Model and dataset cards for hf_ext artefacts, filled through ``huggingface_hub``'s ``ModelCard`` / ``DatasetCard``.

Each method family has a Jinja template in the repository's ``model_cards/<family>.md``, shipped inside the wheel as
``hf_ext/model_cards/<family>.md`` (see ``setup.py``); :func:`template_path` finds it installed, in an editable install
and in a checkout on ``PYTHONPATH``. The metadata of each
paper (arXiv id, BibTeX, licence, tags, whether hf_ext *reconstructed* the method from an abstract) lives in
:data:`FAMILIES`, so a card always carries the citation and an honest statement of what was reconstructed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from ..utils.checkpointing import SafeCheckpointMixin
from ..utils.citations import CITATIONS

__all__ = [
    "FAMILIES",
    "PaperInfo",
    "create_dataset_card",
    "create_model_card",
    "family_for_model_type",
    "task_auto_class",
    "template_path",
]


@dataclass(frozen=True)
class PaperInfo:
    """What a card says about the method behind an artefact."""

    family: str
    title: str
    arxiv: str
    bibtex: str
    tags: tuple[str, ...]
    pipeline_tag: str | None = None
    license: str = "apache-2.0"
    reconstructed: str | None = None  # None: implemented from the paper and official code
    model_types: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def _paper(family: str, **kwargs: Any) -> PaperInfo:
    """The card metadata of ``family``: title, arXiv id and BibTeX from :data:`hf_ext.utils.citations.CITATIONS`."""
    citation = CITATIONS[family]
    return PaperInfo(family=family, title=citation.title, arxiv=citation.arxiv, bibtex=citation.bibtex, **kwargs)


FAMILIES: dict[str, PaperInfo] = {
    "rlhf_v": _paper(
        "rlhf_v",
        tags=("hf_ext", "trl", "dpo", "dense-dpo", "rlhf-v"),
        pipeline_tag="image-text-to-text",
        license="cc-by-nc-4.0",
    ),
    "muffin": _paper(
        "muffin",
        tags=("hf_ext", "muffin", "beit3", "vision-language"),
        pipeline_tag="image-text-to-text",
        model_types=("beit3", "muffin"),
    ),
    "viscpm": _paper(
        "viscpm",
        tags=("hf_ext", "viscpm", "mpm", "multilingual"),
        pipeline_tag="image-text-to-text",
        model_types=("viscpm_chat", "cpmbee"),
    ),
    "iap": _paper(
        "iap",
        tags=("hf_ext", "diffusers", "iap", "text-to-image", "chinese"),
        pipeline_tag="text-to-image",
        reconstructed=(
            "IAP's exact loss could not be read from a public source; hf_ext reconstructs it from the abstract "
            "(distance between cross-attention outputs for English vs Chinese text states on the same noisy "
            "latents). Layers, distance and timestep sampling are configurable."
        ),
    ),
    "della": _paper(
        "della",
        tags=("hf_ext", "della", "vae", "text-generation"),
        pipeline_tag="text-generation",
        model_types=("della",),
    ),
    "trace": _paper(
        "trace",
        tags=("hf_ext", "trace", "vae", "text-generation"),
        pipeline_tag="text-generation",
        model_types=("trace",),
        reconstructed=(
            "TRACE has no public code and its equations could not be read; hf_ext reconstructs the recurrent prior, "
            "the residual posterior and the idempotent-matrix parallel training from the abstract. Every such choice "
            "is a configuration field."
        ),
    ),
    "care": _paper(
        "care",
        tags=("hf_ext", "care", "attention-regularisation", "text-generation"),
        pipeline_tag="text-generation",
        reconstructed=(
            "CARE's exact regulariser could not be read; hf_ext reconstructs it from the abstract as a penalty on "
            "the entropy (or Renyi-alpha entropy) of attention distributions. Form, layers, heads and coefficient "
            "are configurable."
        ),
    ),
    "elv": _paper(
        "elv",
        tags=("hf_ext", "elv", "explanations", "variational-em"),
        pipeline_tag="text-classification",
    ),
    "jiuge": _paper(
        "jiuge",
        tags=("hf_ext", "jiuge", "poetry", "chinese", "text-generation"),
        pipeline_tag="text-generation",
        model_types=("jiuge",),
        reconstructed=(
            "The paper's exact form-stressed loss weights and separator tokens could not be read; hf_ext reconstructs "
            "them from the abstract and makes them configurable."
        ),
    ),
}


def family_for_model_type(model_type: str) -> str | None:
    """The card family of an hf_ext ``model_type`` (``"muffin"`` -> ``"muffin"``, ``"viscpm_chat"`` -> ``"viscpm"``)."""
    for info in FAMILIES.values():
        if model_type in info.model_types:
            return info.family
    return None


# Where the card templates are: inside the installed package (the wheel maps the repository's model_cards/ there), then
# the repository's own model_cards/ (a checkout on PYTHONPATH, or an editable install).
_TEMPLATE_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[1] / "model_cards",
    Path(__file__).resolve().parents[2] / "model_cards",
)


def template_path(family: str) -> Path:
    """Path of the Jinja card template of ``family``: ``hf_ext/model_cards/<family>.md`` inside the installed package,
    else ``model_cards/<family>.md`` at the root of the repository holding ``hf_ext`` (a checkout).

    Args:
        family (`str`):
            A key of :data:`FAMILIES` (``"rlhf_v"``, ``"muffin"``, ...).

    Raises:
        ValueError: ``family`` is not a known card family (the message lists the known ones).
        FileNotFoundError: no folder holds ``<family>.md`` (the message names the file and every folder searched).
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown card family {family!r}; known families: {sorted(FAMILIES)}.")
    for folder in _TEMPLATE_DIRS:
        path = folder / f"{family}.md"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The model card template {family}.md of family {family!r} is missing; searched "
        f"{', '.join(str(folder) for folder in _TEMPLATE_DIRS)}. Installed from a wheel it ships as "
        f"hf_ext/model_cards/{family}.md; reinstall hf_ext (or, in a checkout, restore model_cards/{family}.md)."
    )


def _format_config(training_config: Mapping[str, Any] | Any | None) -> str | None:
    if training_config is None:
        return None
    if hasattr(training_config, "to_dict"):
        training_config = training_config.to_dict()
    from ..utils.checkpointing import sanitize_local_paths

    keep = {
        k: v for k, v in dict(training_config).items() if isinstance(v, (str, int, float, bool, list)) or v is None
    }
    return json.dumps(sanitize_local_paths(keep), indent=2, sort_keys=True, default=str)


# Task Auto classes tried in order before falling back to `AutoModel` (the first whose mapping holds the class).
_TASK_AUTO_CLASSES = (
    "AutoModelForImageTextToText",
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMaskedLM",
)


def task_auto_class(model: Any) -> str:
    """The name of the task Auto class that loads ``model``'s class (e.g. ``"AutoModelForCausalLM"`` for
    ``GPT2LMHeadModel``), looked up in the Auto mappings by its config class (PEFT models are unwrapped);
    ``"AutoModel"`` when no task class maps to it."""
    import transformers

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    config = getattr(model, "config", None)
    for name in _TASK_AUTO_CLASSES:
        auto = getattr(transformers, name, None)
        try:
            mapped = auto._model_mapping[type(config)]
        except (AttributeError, KeyError, ValueError):
            continue
        candidates = mapped if isinstance(mapped, (tuple, list)) else (mapped,)
        if type(model) in candidates:
            return name
    return "AutoModel"


def create_model_card(
    family: str,
    *,
    model_id: str,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    training_config: Mapping[str, Any] | Any | None = None,
    how_to_load: str | None = None,
    description: str | None = None,
    results: str | None = None,
    extra_tags: Sequence[str] = (),
    library_name: str = "transformers",
    auto_class: str = "AutoModel",
) -> ModelCard:
    """Fill the card template of ``family``.

    Args:
        family (`str`): a key of :data:`FAMILIES` (``"rlhf_v"``, ``"muffin"``, ``"viscpm"``, ``"iap"``, ``"della"``,
            ``"trace"``, ``"care"``, ``"elv"``, ``"jiuge"``).
        model_id (`str`): the repository id (or local name) the card describes.
        base_model (`str` or `list[str]`, *optional*): the model(s) it was initialised from.
        datasets (`list[str]`, *optional*): training datasets (Hub ids or names).
        training_config (`dict` or an object with `to_dict()`, *optional*): serialised into the card.
        how_to_load (`str`, *optional*): a Python snippet; defaults to an ``AutoModel`` snippet.
        description, results (`str`, *optional*): free text sections.
        extra_tags (`list[str]`, *optional*): tags added to the family's tags.
        library_name (`str`, *optional*, defaults to `"transformers"`): ``"diffusers"`` for pipelines.
        auto_class (`str`, *optional*, defaults to `"AutoModel"`): the Auto class of the default ``how_to_load``
            snippet (e.g. ``"AutoModelForCausalLM"``; see :func:`task_auto_class`).
    """
    info = FAMILIES.get(family)
    if info is None:
        raise ValueError(f"Unknown card family {family!r}; known families: {sorted(FAMILIES)}.")
    if isinstance(base_model, str):
        base_model = [base_model]
    card_data = ModelCardData(
        library_name=library_name,
        license=info.license,
        base_model=list(base_model) if base_model else None,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*info.tags, *extra_tags])),
        pipeline_tag=info.pipeline_tag,
    )
    if how_to_load is None:
        how_to_load = (
            "import hf_ext  # registers the hf_ext model types with the Auto classes\n"
            f"from transformers import {auto_class}\n\n"
            f'model = {auto_class}.from_pretrained("{model_id}")'
        )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(family)),
        model_id=model_id,
        paper_title=info.title,
        arxiv_id=info.arxiv,
        bibtex=info.bibtex,
        reconstructed=info.reconstructed,
        how_to_load=how_to_load,
        training_config=_format_config(training_config),
        description=description,
        results=results,
    )


def create_dataset_card(
    *,
    pretty_name: str,
    builder: str,
    source: str,
    num_rows: Mapping[str, int],
    features: str,
    license: str | None = None,
    bad_rows: str | None = None,
    citation: str | None = None,
    tags: Sequence[str] = (),
) -> DatasetCard:
    """A dataset card for the output of an hf_ext builder (front matter + the standard sections).

    Unknown facts are written as "[More Information Needed]", as the Hub's own template does, never guessed.
    """
    total = sum(num_rows.values())
    size = "n<1K" if total < 1_000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "n>100K"
    data = DatasetCardData(pretty_name=pretty_name, license=license, tags=["hf_ext", *tags], size_categories=[size])
    splits = "\n".join(f"| {name} | {n} |" for name, n in num_rows.items())
    unknown = "[More Information Needed]"
    content = f"""---
{data.to_yaml()}
---

# {pretty_name}

Converted with hf_ext's `{builder}` builder.

## Dataset Details

- **Source:** {source}
- **License:** {license or unknown}

## Dataset Structure

| split | rows |
| --- | --- |
{splits}

Features: {features}

## Dataset Creation

Rows that could not be converted: {bad_rows or "none"}.

## Bias, Risks, and Limitations

{unknown}

## Citation

{f"```bibtex{chr(10)}{citation}{chr(10)}```" if citation else unknown}
"""
    return DatasetCard(content)


class HfExtModelCardMixin(SafeCheckpointMixin):
    """Mixin for hf_ext trainers (``transformers.Trainer`` or TRL subclasses): their model card is hf_ext's.

    It is also a :class:`~hf_ext.utils.checkpointing.SafeCheckpointMixin` (atomic checkpoints, resume skipping
    incomplete ones, training arguments as JSON, pickle-free pushes, weights manifest). The card names the Hub repo
    id (``hub_model_id``) when there is one, the task Auto class of the model, and no local path.

    Set ``_hf_ext_card_family`` on the trainer class (left empty, the family is inferred from the model's
    ``config.model_type``, e.g. ``della`` or ``trace``). ``Trainer.push_to_hub`` and ``save_model`` call
    ``create_model_card``, which then writes ``README.md`` in ``args.output_dir`` from the family's template, with
    the paper's citation, the training configuration and, where applicable, the reconstruction statement.
    """

    _hf_ext_card_family: str = ""

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.is_world_process_zero():
            return
        model = getattr(self, "model", None)
        base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        if base and Path(base).exists():
            base = None  # a local path is not a Hub id
        # the repository id once `push_to_hub` / `init_hf_repo` made one (TRL and Trainer pass only its last part)
        hub_id = getattr(self, "hub_model_id", None) or getattr(self.args, "hub_model_id", None)
        model_id = hub_id or model_name or Path(self.args.output_dir).name
        datasets = [dataset_name] if isinstance(dataset_name, str) else kwargs.get("dataset")
        extra = [tags] if isinstance(tags, str) else list(tags or [])
        family = self._hf_ext_card_family or family_for_model_type(
            getattr(getattr(model, "config", None), "model_type", "")
        )
        if not family:
            return super().create_model_card(model_name=model_name, tags=tags, **kwargs)
        card = create_model_card(
            family,
            model_id=model_id,
            base_model=base,
            datasets=datasets if isinstance(datasets, list) else ([datasets] if datasets else None),
            training_config=self.args,
            extra_tags=extra,
            auto_class=task_auto_class(model) if model is not None else "AutoModel",
        )
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        card.save(str(Path(self.args.output_dir) / "README.md"))
