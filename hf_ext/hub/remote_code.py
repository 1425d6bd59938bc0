"""Ship hf_ext model code with every saved checkpoint, so it loads where hf_ext is not installed.

``save_pretrained`` / ``push_to_hub`` of every registered hf_ext model, processor and image processor write, next
to the weights, the model folder's code files and an ``auto_map``; then
``AutoModel.from_pretrained(repo, trust_remote_code=True)`` works without hf_ext. With hf_ext installed the
registered (local) classes win and no ``trust_remote_code`` is needed (transformers prefers local code).

transformers' own ``register_for_auto_class`` copies only same-folder relative imports; hf_ext models may import a
sibling model folder (Muffin uses BEiT-3: ``from ..beit3.modeling_beit3 import ...``). :func:`collect_code_files`
follows such imports, copies the files flat and rewrites the imports to ``from .modeling_beit3 import ...``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write

__all__ = ["RemoteCodeError", "collect_code_files", "enable_remote_code_export", "export_remote_code"]

_RELATIVE_IMPORT = re.compile(r"^(?P<indent>\s*)from\s+(?P<dots>\.+)(?P<mod>[\w.]*)\s+import\s", re.MULTILINE)
_HF_EXT_IMPORT = re.compile(r"^\s*(from\s+hf_ext[\s.]|import\s+hf_ext\b)", re.MULTILINE)


class RemoteCodeError(ValueError):
    """A model's code cannot be exported as Hub remote code."""


def _module_file(module_name: str) -> Path:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise RemoteCodeError(f"Cannot locate the source of module {module_name!r}.")
    return Path(spec.origin)


def collect_code_files(classes: list[type]) -> dict[str, str]:
    """Return ``{file_name: source}`` for the modules defining ``classes`` and everything they import relatively.

    Relative imports are resolved (also across sibling folders), copied flat and rewritten to same-folder imports.
    Raises :class:`RemoteCodeError` when a module imports ``hf_ext`` absolutely, imports a package ``__init__``,
    or when two different modules would share a file name.
    """
    files: dict[str, str] = {}
    origins: dict[str, str] = {}
    queue = list(dict.fromkeys(cls.__module__ for cls in classes))
    seen: set[str] = set()
    while queue:
        module_name = queue.pop(0)
        if module_name in seen:
            continue
        seen.add(module_name)
        path = _module_file(module_name)
        if path.name == "__init__.py":
            raise RemoteCodeError(
                f"{module_name} is a package: hf_ext model code must import classes from modules "
                "(`from .modeling_x import X`), not from a package `__init__`."
            )
        source = path.read_text(encoding="utf-8")
        if _HF_EXT_IMPORT.search(source):
            raise RemoteCodeError(
                f"{path} imports hf_ext absolutely; model code shipped as remote code may only import torch, "
                "transformers, the standard library and relative modules."
            )
        package = module_name.rpartition(".")[0]

        def _rewrite(match: re.Match, _package: str = package) -> str:
            target = importlib.util.resolve_name(match["dots"] + match["mod"], _package)
            queue.append(target)
            return f"{match['indent']}from .{target.rpartition('.')[2]} import "

        rewritten = _RELATIVE_IMPORT.sub(_rewrite, source)
        name = path.name
        if name in origins and origins[name] != module_name:
            raise RemoteCodeError(f"Two modules would both be exported as {name}: {origins[name]} and {module_name}.")
        origins[name] = module_name
        files[name] = rewritten
    return files


def _class_ref(cls: type) -> str:
    return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"


def _registry_entry(model_type: str) -> dict[str, Any]:
    from ..models._registry import registered_models

    entry = registered_models().get(model_type)
    if entry is None:
        raise RemoteCodeError(f"model_type {model_type!r} is not registered by hf_ext.")
    return entry


def _update_json(path: Path, auto_map: dict[str, Any], nested: dict[str, dict[str, str]] | None = None) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if auto_map:
        data.setdefault("auto_map", {}).update(auto_map)
    for key, sub_map in (nested or {}).items():
        if isinstance(data.get(key), dict):
            data[key].setdefault("auto_map", {}).update(sub_map)
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _processor_auto_map(obj: Any) -> tuple[list[type], dict[str, dict[str, str]]]:
    """Classes to ship and ``{json file: auto_map}`` for a processor or image processor (they have no config).

    A processor class can serve several model types (Muffin's serves ``muffin`` and ``viscpm_chat``), so only the
    processor's own Auto classes are written, into the files that ``AutoProcessor`` / ``AutoImageProcessor`` read.
    """
    from transformers import ProcessorMixin

    classes: list[type] = [type(obj)]
    maps: dict[str, dict[str, str]] = {}
    image_processor = obj if not isinstance(obj, ProcessorMixin) else getattr(obj, "image_processor", None)
    if isinstance(obj, ProcessorMixin):
        maps["processor_config.json"] = {"AutoProcessor": _class_ref(type(obj))}
    if image_processor is not None and getattr(type(image_processor), "_hf_ext_model_type", None):
        classes.append(type(image_processor))
        maps["preprocessor_config.json"] = {"AutoImageProcessor": _class_ref(type(image_processor))}
    return classes, maps


def export_remote_code(obj: Any, save_directory: str | Path) -> list[Path]:
    """Write the code files and ``auto_map`` of the hf_ext object ``obj`` (model, processor or image processor).

    Models write ``auto_map`` (AutoConfig + every Auto class registered for their ``model_type``, and the
    processor classes registered with it) into ``config.json``; processors write ``AutoProcessor`` into
    ``processor_config.json``; image processors ``AutoImageProcessor`` into ``preprocessor_config.json``.
    Returns the code files written.
    """
    save_directory = Path(save_directory)
    config = getattr(obj, "config", None)
    if config is not None and getattr(config, "model_type", None):
        entry = _registry_entry(config.model_type)
        classes: list[type] = [entry["config"]]
        auto_map: dict[str, Any] = {"AutoConfig": _class_ref(entry["config"])}
        for auto_name, model_cls in entry["models"].items():
            classes.append(model_cls)
            auto_map[auto_name] = _class_ref(model_cls)
        classes += entry.get("variants", [])  # reached through a registered class: their code ships, no auto_map
        for key, auto_name in (("processor", "AutoProcessor"), ("image_processor", "AutoImageProcessor")):
            if entry.get(key) is not None:
                classes.append(entry[key])
                auto_map[auto_name] = _class_ref(entry[key])
        maps = {"config.json": auto_map}
    elif getattr(type(obj), "_hf_ext_model_type", None):
        classes, maps = _processor_auto_map(obj)
    else:
        raise RemoteCodeError(f"Cannot tell which hf_ext model {type(obj).__name__} belongs to.")
    files = collect_code_files(classes)
    save_directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in files.items():
        with atomic_write(save_directory / name, "w") as f:
            f.write(source)
        written.append(save_directory / name)
    for file_name, auto_map in maps.items():
        if (save_directory / file_name).is_file():
            _update_json(save_directory / file_name, auto_map)
    nested = maps.get("preprocessor_config.json")
    if nested and (save_directory / "processor_config.json").is_file():
        # transformers 5 nests the image processor's config in processor_config.json; AutoImageProcessor reads the
        # auto_map from that nested dict, so it must be there too for remote loading.
        _update_json(save_directory / "processor_config.json", {}, nested={"image_processor": nested})
    return written


def enable_remote_code_export(cls: type, model_type: str) -> None:
    """Make ``cls.save_pretrained`` (hence ``push_to_hub``) also call :func:`export_remote_code`. Idempotent."""
    cls._hf_ext_model_type = model_type
    current = cls.save_pretrained
    if getattr(current, "_hf_ext_remote_code", False):
        return

    @functools.wraps(current)
    def save_pretrained(self, save_directory, *args, **kwargs):
        out = current(self, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and getattr(self, "_hf_ext_export_code", True):
            export_remote_code(self, save_directory)
        return out

    save_pretrained._hf_ext_remote_code = True
    cls.save_pretrained = save_pretrained
