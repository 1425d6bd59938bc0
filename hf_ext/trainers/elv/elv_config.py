"""ELV's configurations (TRL style: one config module beside the trainer).

* :class:`ELVModelConfig`: what an [`ELVModel`] needs at inference time (label names, K, templates, lengths), saved as
  ``elv_config.json`` at the root of an ELV repository.
* :class:`ELVConfig`: the training arguments of [`ELVTrainer`] (variational EM and explanation-based self-training).

The predictor's own ``PretrainedConfig`` (:class:`~hf_ext.models.elv_predictor.ELVPredictorConfig`, model type
``elv_predictor``) lives with the model under ``hf_ext/models/elv_predictor/``, as transformers does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import TrainingArguments

__all__ = ["ELV_CONFIG_NAME", "ELVConfig", "ELVModelConfig"]


ELV_CONFIG_NAME = "elv_config.json"
_FORMAT_VERSION = 1


@dataclass
class ELVModelConfig:
    """What [`ELVModel`] needs at inference time; saved as ``elv_config.json`` next to the parts.

    Args:
        label_names (`list[str]`): class names, index = label id. The generator is conditioned on these exact strings
            at training and inference (the official code uses different strings in the two, see the docs).
        num_explanations (`int`, *optional*, defaults to 10): K, explanations retrieved per input (official: 10).
        generator_source_template (`str`, *optional*, defaults to `"{label} || {text}"`): source text of the generator
            q(e | x, y). The official code writes ``sentence [SEP] label``; the default puts the label first so that
            truncating a long sentence never removes it. Use ``"{text} || {label}"`` for the official order.
        aspect_template (`str`, *optional*, defaults to `"{aspect} || {text}"`): how an aspect-sentiment example's
            aspect term is joined to its sentence (official: ``term [SEP] sentence``).
        entity_markers (`list[str]`, *optional*, defaults to `["<subj>", "</subj>", "<obj>", "</obj>"]`): strings
            inserted around the subject and object spans of relation-extraction examples (official: ``#subj#`` ...).
        max_seq_length (`int`, *optional*, defaults to 128): predictor input length (input + one explanation).
        max_source_length (`int`, *optional*, defaults to 128): generator source length.
        max_target_length (`int`, *optional*, defaults to 64): generator target length and ``max_new_tokens``.
        generation_num_beams (`int`, *optional*, defaults to 1): beams when generating explanations (official: greedy).
        retriever_max_length (`int`, *optional*, defaults to 128): truncation of the retriever's sentence encoder.
    """

    label_names: list[str] = field(default_factory=list)
    num_explanations: int = 10
    generator_source_template: str = "{label} || {text}"
    aspect_template: str = "{aspect} || {text}"
    entity_markers: list[str] = field(default_factory=lambda: ["<subj>", "</subj>", "<obj>", "</obj>"])
    max_seq_length: int = 128
    max_source_length: int = 128
    max_target_length: int = 64
    generation_num_beams: int = 1
    retriever_max_length: int = 128

    def __post_init__(self) -> None:
        self.label_names = list(self.label_names)
        self.entity_markers = list(self.entity_markers)
        if not self.label_names:
            raise ValueError("ELVModelConfig.label_names is empty: pass the class names (index = label id).")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"ELVModelConfig.label_names has duplicates: {self.label_names}.")
        if self.num_explanations < 1:
            raise ValueError(f"num_explanations must be >= 1, got {self.num_explanations}.")
        for key in ("{text}", "{label}"):
            if key not in self.generator_source_template:
                raise ValueError(f"generator_source_template must contain {key}: {self.generator_source_template!r}.")
        if len(self.entity_markers) != 4:
            raise ValueError(
                f"entity_markers must be 4 strings (subj open/close, obj open/close): {self.entity_markers}"
            )

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": _FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ELVModelConfig:
        data = dict(data)
        data.pop("format_version", None)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown keys in {ELV_CONFIG_NAME}: {sorted(unknown)}.")
        return cls(**data)


@dataclass
class ELVConfig(TrainingArguments):
    r"""
    Configuration of [`ELVTrainer`]: ELV's variational EM ("Towards Interpretable Natural Language Understanding with
    Explanations as Latent Variables", Zhou, Hu et al., NeurIPS 2020) and its explanation-based self-training (EST).

    Everything of [`~transformers.TrainingArguments`] applies (``output_dir``, ``per_device_train_batch_size``,
    ``gradient_accumulation_steps``, ``weight_decay``, ``warmup_steps``, ``lr_scheduler_type``, ``max_grad_norm``,
    ``seed``, ``report_to``, ``disable_tqdm``, ``logging_dir`` ...) to every training phase. ``num_train_epochs``,
    ``max_steps``, ``save_strategy``/``save_steps`` and ``eval_strategy`` are *not* used: ELV's schedule is set by the
    fields below.

    > [!NOTE]
    > Defaults that differ from `TrainingArguments`: `learning_rate=1e-5`, `per_device_train_batch_size=8`,
    > `gradient_accumulation_steps=4`, `weight_decay=0.01`, `adam_epsilon=1e-8` (the official SemEval script).

    > Parameters that control the EM schedule

    Args:
        num_em_rounds (`int`, *optional*, defaults to 20):
            EM iterations. Each is: predictor M-step, E-step, generator M-step (the official order). Official scripts:
            20 (SemEval, Restaurant), 10 (TACRED), 8 (self-training).
        predictor_epochs (`int`, *optional*, defaults to 3):
            Epochs of each predictor M-step (official: 3).
        generator_epochs (`int`, *optional*, defaults to 5):
            Epochs of each generator M-step (official: 5).
        generator_init_epochs (`int`, *optional*, defaults to 5):
            Epochs of the initial generator training on the human-annotated explanations.
        predictor_learning_rate (`float`, *optional*):
            Learning rate of the predictor phases; defaults to `learning_rate`.
        generator_learning_rate (`float`, *optional*):
            Learning rate of the generator phases; defaults to `learning_rate`.

    > Parameters that control the E-step

    Args:
        e_step_scoring (`str`, *optional*, defaults to `"posterior"`):
            ``"posterior"``: sample candidate e_i with probability ∝ prior(e_i | x) · p_θ(y | x, e_i), each candidate
            scored by the predictor on its own (the paper's rule). ``"official_code"``: the published code's
            ``softmax(angular_distance · p_θ(y | x, all K))``, which does not discriminate between candidates (kept
            only for comparison; see the docs).
        prior (`str`, *optional*, defaults to `"softmax"`):
            How retrieval similarity becomes the prior over the K candidates: ``"softmax"`` =
            ``softmax(cos / prior_temperature)``, ``"uniform"`` = 1/K.
        prior_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the softmax prior. Cosine similarities of near neighbours differ by a few hundredths; at
            temperature 1 the prior is almost uniform. This value is our choice (the paper's is not known here).
        e_step_selection (`str`, *optional*, defaults to `"sample"`):
            ``"sample"`` draws one explanation from the E-step distribution (official); ``"argmax"`` takes the mode.
        generator_m_step_include_human (`bool`, *optional*, defaults to `True`):
            Also train the generator on the human-annotated (x, y, e) triples in every generator M-step (official).

    > Parameters that control self-training (EST)

    Args:
        self_training_rounds (`int`, *optional*, defaults to 0):
            Rounds of explanation-based self-training after the first EM run; 0 disables it (supervised ELV).
            Official scripts: 20-30.
        self_training_samples_per_round (`int`, *optional*, defaults to 300):
            Unlabelled examples moved into the labelled set per round: the most confident predictions.
        self_training_from_scratch (`bool`, *optional*, defaults to `False`):
            Re-initialise both models to their initial weights before each self-training round's EM run
            (official ``--train_from_scratch``); the generator is then re-trained on the human explanations.
        self_training_init_predictor_epochs (`int`, *optional*, defaults to 0):
            Epochs of a predictor warm-up on the labelled data (with retrieved explanations) before the first
            pseudo-labelling. The official EST scripts use 15.

    > Parameters that control checkpoints

    Args:
        em_save_strategy (`str`, *optional*, defaults to `"round"`):
            ``"phase"``: a checkpoint after every phase; ``"round"``: after every EM round and pseudo-labelling step;
            ``"no"``: none. Each checkpoint is a complete [`ELVModel`] folder plus ``elv_trainer_state.json`` and can
            be resumed with ``trainer.train(resume_from_checkpoint=...)``.
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate (official scripts: 1e-5)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Gradient accumulation steps."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})

    num_em_rounds: int = field(default=20, metadata={"help": "EM iterations."})
    predictor_epochs: int = field(default=3, metadata={"help": "Epochs of each predictor M-step."})
    generator_epochs: int = field(default=5, metadata={"help": "Epochs of each generator M-step."})
    generator_init_epochs: int = field(
        default=5, metadata={"help": "Epochs of the initial generator training on human explanations."}
    )
    predictor_learning_rate: float | None = field(
        default=None, metadata={"help": "Predictor learning rate (default: learning_rate)."}
    )
    generator_learning_rate: float | None = field(
        default=None, metadata={"help": "Generator learning rate (default: learning_rate)."}
    )
    e_step_scoring: str = field(
        default="posterior",
        metadata={"help": "E-step rule.", "choices": ["posterior", "official_code"]},
    )
    prior: str = field(
        default="softmax", metadata={"help": "Similarity prior over candidates.", "choices": ["softmax", "uniform"]}
    )
    prior_temperature: float = field(default=0.1, metadata={"help": "Temperature of the softmax prior."})
    e_step_selection: str = field(
        default="sample", metadata={"help": "Sample or take the mode.", "choices": ["sample", "argmax"]}
    )
    generator_m_step_include_human: bool = field(
        default=True, metadata={"help": "Add the human explanations to every generator M-step."}
    )
    self_training_rounds: int = field(default=0, metadata={"help": "Explanation-based self-training rounds."})
    self_training_samples_per_round: int = field(
        default=300, metadata={"help": "Pseudo-labelled examples added per self-training round."}
    )
    self_training_from_scratch: bool = field(
        default=False, metadata={"help": "Re-initialise both models before each self-training round."}
    )
    self_training_init_predictor_epochs: int = field(
        default=0, metadata={"help": "Predictor warm-up epochs before the first pseudo-labelling."}
    )
    em_save_strategy: str = field(
        default="round", metadata={"help": "When to checkpoint.", "choices": ["phase", "round", "no"]}
    )

    def __post_init__(self):
        super().__post_init__()
        choices = {
            "e_step_scoring": ("posterior", "official_code"),
            "prior": ("softmax", "uniform"),
            "e_step_selection": ("sample", "argmax"),
            "em_save_strategy": ("phase", "round", "no"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ELVConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in (
            "num_em_rounds",
            "predictor_epochs",
            "generator_epochs",
            "generator_init_epochs",
            "self_training_rounds",
            "self_training_init_predictor_epochs",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"ELVConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.self_training_rounds > 0 and self.self_training_samples_per_round < 1:
            raise ValueError(
                f"self_training_samples_per_round must be >= 1 when self-training is on, got "
                f"{self.self_training_samples_per_round}."
            )
        if self.prior_temperature <= 0:
            raise ValueError(f"ELVConfig.prior_temperature must be > 0, got {self.prior_temperature}.")
        if self.predictor_learning_rate is None:
            self.predictor_learning_rate = self.learning_rate
        if self.generator_learning_rate is None:
            self.generator_learning_rate = self.learning_rate
