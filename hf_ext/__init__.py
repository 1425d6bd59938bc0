"""hf_ext: THUNLP/OpenBMB research systems as first-class Hugging Face citizens.

Every public class is importable from the top level, as in transformers and diffusers
(``from hf_ext import MuffinForConditionalGeneration, DenseDPOTrainer, VisCPMPaintPipeline``): the names are those a
subpackage of :mod:`hf_ext.models`, :mod:`hf_ext.trainers` or :mod:`hf_ext.pipelines` lists in its ``__all__``, read
from the source on first use, and each is imported (with its subpackage) on first access. ``import hf_ext`` itself
imports neither torch, transformers, trl nor diffusers.

Importing ``hf_ext`` registers every hf_ext model with the transformers Auto classes (``AutoConfig``,
``AutoModel*``, ``AutoProcessor``, ...), so checkpoints load with ``from_pretrained`` and no ``trust_remote_code``,
and gives them their Hub behaviour (:mod:`hf_ext.hub`). Registration needs transformers (and torch): when transformers
is already imported it happens at once, otherwise right after ``transformers`` itself is imported, so commands that
never touch transformers (e.g. ``hf-ext --help``) do not pay for it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = ("hub", "metrics", "models", "pipelines", "testing", "trainers", "utils")

# The subpackages whose public classes are exported at the top level; on a name clash the first one listed wins (the
# trainers re-export the ELV predictor of models/, the same object).
_EXPORTING_SUBPACKAGES = ("models", "trainers", "pipelines")


# ----------------------------------------------------------------------------------------- Auto-class registration

_registration_pending = False


def _register_models() -> None:
    """Import :mod:`hf_ext.models` (each model package registers itself with the Auto classes) and install the Hub
    behaviour of every registered model, now and for each one registered later (:mod:`hf_ext.hub`).

    When ``hf_ext.models`` is already being imported (it imports transformers), that import registers everything."""
    global _registration_pending
    _registration_pending = False
    _remove_hook()
    if f"{__name__}.models" not in sys.modules:
        importlib.import_module(f"{__name__}.models")
    importlib.import_module(f"{__name__}.hub").install_hub_behaviour()


def _hf_ext_module_initializing(exclude: str) -> bool:
    for name, module in list(sys.modules.items()):
        if name != exclude and (name == __name__ or name.startswith(__name__ + ".")):
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return True
    return False


class _WrappedLoader:
    """The module's own loader (everything delegated: ``get_code`` for ``python -m``, resources, ...) plus a step
    after ``exec_module``. (Not an ``importlib.abc.Loader`` subclass: importing ``importlib.abc`` alone costs more
    than the rest of ``import hf_ext``.)"""

    def __init__(self, loader, name: str):
        self._loader, self._name = loader, name

    def __getattr__(self, attr: str):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _registration_pending
        self._loader.exec_module(module)
        if self._name == "transformers":
            _registration_pending = True
        # Register once transformers is loaded and no hf_ext module is half-initialised (an hf_ext module that imports
        # transformers registers at the end of its own import, so model code can import it back).
        if _registration_pending and not _hf_ext_module_initializing(exclude=self._name):
            _register_models()


class _RegisterAfterTransformersImport:
    """A meta path finder that lets the normal finders find ``transformers`` and ``hf_ext.*`` modules and wraps their
    loaders so hf_ext's models are registered right after transformers is imported (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers" and not fullname.startswith(__name__ + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _WrappedLoader(spec.loader, fullname)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterTransformersImport)]


# ------------------------------------------------------------------------------------------ lazy top-level names

_ALL_ASSIGNMENT = r"^__all__\s*(?::[^=\n]*)?=\s*(?P<value>[\[(].*?[\])])\s*$"
_exports: dict[str, str] | None = None  # public name -> module whose __all__ lists it


def _is_class_name(name: str) -> bool:
    """``CapWords`` (PEP 8 class names); ``UPPER_CASE`` constants and ``snake_case`` functions stay in their module."""
    return name[:1].isupper() and not name.isupper()


def _read_all(path: str) -> list[str]:
    """The literal ``__all__`` list of the module at ``path`` (read from the source: nothing is imported)."""
    import ast  # here, not at the top: `import hf_ext` stays a few milliseconds
    import re

    with open(path, encoding="utf-8") as f:
        match = re.search(_ALL_ASSIGNMENT, f.read(), re.MULTILINE | re.DOTALL)
    if match is None:
        return []
    try:
        names = ast.literal_eval(match["value"])
    except (ValueError, SyntaxError):
        return []  # not a literal list: tests/test_architecture.py names the module
    return [n for n in names if isinstance(n, str)]


def _public_modules() -> list[tuple[str, str]]:
    """``(module name, source file)`` of every public subpackage/module of the exporting subpackages, in order."""
    found = []
    here = os.path.dirname(__file__)
    for group in _EXPORTING_SUBPACKAGES:
        for entry in sorted(os.scandir(os.path.join(here, group)), key=lambda e: e.name):
            name, ext = os.path.splitext(entry.name)
            if name.startswith("_"):
                continue
            if entry.is_dir() and os.path.isfile(init := os.path.join(entry.path, "__init__.py")):
                found.append((f"{__name__}.{group}.{name}", init))
            elif entry.is_file() and ext == ".py":
                found.append((f"{__name__}.{group}.{name}", entry.path))
    return found


def _export_table() -> dict[str, str]:
    """``{class name: module}`` for every class name in the ``__all__`` of the modules of :func:`_public_modules`."""
    global _exports
    if _exports is None:
        table: dict[str, str] = {}
        for module, path in _public_modules():
            for name in _read_all(path):
                if _is_class_name(name):
                    table.setdefault(name, module)
        _exports = table
    return _exports


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__all__":  # `from hf_ext import *`: every exported class (which imports them all, as transformers)
        return ["__version__", *_export_table()]
    module_name = _export_table().get(name) if not name.startswith("__") else None
    if module_name is None:
        raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_export_table()))


if TYPE_CHECKING:  # pragma: no cover  (for IDEs and type checkers; tests/test_architecture.py keeps it complete)
    from .models.beit3 import (  # noqa: F401
        Beit3Config,
        Beit3Model,
        Beit3ModelOutput,
        Beit3PreTrainedModel,
    )
    from .models.cpmbee import (  # noqa: F401
        CpmBeeBeamSearchOutput,
        CpmBeeCache,
        CpmBeeConfig,
        CpmBeeForCausalLM,
        CpmBeeModel,
        CpmBeePreTrainedModel,
        CpmBeeTokenizer,
        CpmBeeTokenMaskLogitsProcessor,
    )
    from .models.della import (  # noqa: F401
        DellaConfig,
        DellaForCausalLM,
        DellaForConditionalGeneration,
        DellaLatentOutput,
        DellaModel,
        DellaPreTrainedModel,
        TextVAEOutput,
    )
    from .models.elv_predictor import (  # noqa: F401
        ELVPredictorConfig,
        ELVPredictorModel,
        ELVPredictorOutput,
    )
    from .models.jiuge import (  # noqa: F401
        JiugeCausalLMOutput,
        JiugeConfig,
        JiugeForCausalLM,
        JiugeModel,
        JiugePreTrainedModel,
        JiugeTokenizer,
        PoemForm,
        PoemFormLogitsProcessor,
    )
    from .models.muffin import (  # noqa: F401
        MuffinCausalLMOutputWithPast,
        MuffinConfig,
        MuffinForConditionalGeneration,
        MuffinImageProcessor,
        MuffinModel,
        MuffinModelOutputWithPast,
        MuffinMultiModalProjector,
        MuffinPreTrainedModel,
        MuffinProcessor,
    )
    from .models.trace import (  # noqa: F401
        TraceConfig,
        TraceForCausalLM,
        TraceModel,
        TracePreTrainedModel,
    )
    from .models.viscpm_chat import (  # noqa: F401
        VisCPMChatBeeForConditionalGeneration,
        VisCPMChatConfig,
        VisCPMChatForConditionalGeneration,
        VisCPMChatModel,
        VisCPMChatPreTrainedModel,
    )
    from .pipelines.iap import (  # noqa: F401
        CaptureAttnProcessor,
        CapturedAttention,
        CrossAttentionCapture,
        IAPLossConfig,
        IAPLossOutput,
        IAPStableDiffusionPipeline,
        IAPTextProjection,
    )
    from .pipelines.training_utils import (  # noqa: F401
        SeededImageAugmentation,
    )
    from .pipelines.viscpm_paint import (  # noqa: F401
        VisCPMPaintPipeline,
        VisCPMPaintTextProjection,
    )
    from .trainers.care import (  # noqa: F401
        AttentionSite,
        CARECollector,
        CAREConfig,
        CAREPenaltyOutput,
        CARERegularizer,
        CARETrainer,
    )
    from .trainers.dense_dpo import (  # noqa: F401
        DataCollatorForDensePreference,
        DataCollatorForDenseVisionPreference,
        DenseDPOConfig,
        DenseDPOTrainer,
    )
    from .trainers.elv import (  # noqa: F401
        ELVConfig,
        ELVModel,
        ELVModelConfig,
        ELVTrainer,
        ExplanationBank,
    )
    from .trainers.text_vae import (  # noqa: F401
        CyclicalBetaCallback,
        DataCollatorForTextVAE,
        DellaOriginalBetaCallback,
        TextVAEConfig,
        TextVAETrainer,
    )


if "transformers" in sys.modules:
    _register_models()
else:
    _remove_hook()
    sys.meta_path.insert(0, _RegisterAfterTransformersImport())
