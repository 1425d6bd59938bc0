"""hf_ext: THUNLP/OpenBMB research systems as first-class Hugging Face citizens.

Importing ``hf_ext`` registers every hf_ext model with the transformers Auto classes (``AutoConfig``,
``AutoModel*``, ``AutoProcessor``, ...), so checkpoints load with ``from_pretrained`` and no
``trust_remote_code``. Registration needs transformers (and torch): when transformers is already imported it happens
at once, otherwise right after ``transformers`` itself is imported, so commands that never touch transformers (e.g.
``hf-ext --help``) do not pay for it. Trainers and pipelines are imported lazily on first attribute access, so
``import hf_ext`` stays cheap (it does not import trl or diffusers).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = ("hub", "metrics", "models", "pipelines", "testing", "trainers", "utils")


_registration_pending = False


def _register_models() -> None:
    """Import :mod:`hf_ext.models`: each model package (and ELV's predictor) registers itself with the Auto classes.

    When ``hf_ext.models`` is already being imported (it imports transformers), that import registers everything."""
    global _registration_pending
    _registration_pending = False
    _remove_hook()
    if f"{__name__}.models" not in sys.modules:
        importlib.import_module(f"{__name__}.models")


def _hf_ext_module_initializing(exclude: str) -> bool:
    for name, module in list(sys.modules.items()):
        if name != exclude and (name == __name__ or name.startswith(__name__ + ".")):
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return True
    return False


class _WrappedLoader(importlib.abc.Loader):
    """The module's own loader (everything delegated: ``get_code`` for ``python -m``, resources, ...) plus a step
    after ``exec_module``."""

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


class _RegisterAfterTransformersImport(importlib.abc.MetaPathFinder):
    """Lets the normal finders find ``transformers`` and ``hf_ext.*`` modules and wraps their loaders so hf_ext's
    models are registered right after transformers is imported (see the module docstring)."""

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


if "transformers" in sys.modules:
    _register_models()
else:
    _remove_hook()
    sys.meta_path.insert(0, _RegisterAfterTransformersImport())

# public name -> module that defines it (imported on first access)
_LAZY_ATTRS: dict[str, str] = {
    "DenseDPOConfig": "hf_ext.trainers.dense_dpo",
    "DenseDPOTrainer": "hf_ext.trainers.dense_dpo",
    "TextVAEConfig": "hf_ext.trainers.text_vae",
    "TextVAETrainer": "hf_ext.trainers.text_vae",
    "CAREConfig": "hf_ext.trainers.care",
    "CARETrainer": "hf_ext.trainers.care",
    "ELVConfig": "hf_ext.trainers.elv",
    "ELVModel": "hf_ext.trainers.elv",
    "ELVTrainer": "hf_ext.trainers.elv",
    "VisCPMPaintPipeline": "hf_ext.pipelines.viscpm_paint",
    "IAPStableDiffusionPipeline": "hf_ext.pipelines.iap",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module_name = _LAZY_ATTRS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRS))


if TYPE_CHECKING:  # pragma: no cover
    from .pipelines.iap import IAPStableDiffusionPipeline  # noqa: F401
    from .pipelines.viscpm_paint import VisCPMPaintPipeline  # noqa: F401
    from .trainers.care import CAREConfig, CARETrainer  # noqa: F401
    from .trainers.dense_dpo import DenseDPOConfig, DenseDPOTrainer  # noqa: F401
    from .trainers.elv import ELVConfig, ELVModel, ELVTrainer  # noqa: F401
    from .trainers.text_vae import TextVAEConfig, TextVAETrainer  # noqa: F401

__all__ = ["__version__", *_LAZY_ATTRS]
