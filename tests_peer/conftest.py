"""Run transformers' own test mixins against hf_ext's models (``make test-peer``).

The mixins (``ModelTesterMixin``, ``ConfigTester``, ``PipelineTesterMixin``) are the files of transformers' source
distribution for the *installed* version, fetched from PyPI with pip at the first run and cached (never copied into
this repository):

* cache: ``$HF_EXT_PEER_CACHE``, else ``$XDG_CACHE_HOME/hf_ext/peer`` (``~/.cache/hf_ext/peer``);
* offline: ``HF_EXT_PEER_SDIST=/path/to/transformers-<version>.tar.gz`` uses a tarball you downloaded yourself.

Only the ``tests/`` folder of the tarball is extracted. It is exposed as the package ``tests`` together with
``tests_peer/transformers_standins/``, which holds the smallest stand-ins for the files the mixins import but the
distribution does not ship (see ``docs/conformance.md``). ``src/transformers`` (which the pipeline mixin imports by
path) is linked to the installed package, exactly what transformers' own CI does with its editable install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "transformers_standins"

# stand-ins are imported through the `tests` package, never collected as tests themselves
collect_ignore_glob = ["transformers_standins/*"]


def _cache_root() -> Path:
    if os.environ.get("HF_EXT_PEER_CACHE"):
        return Path(os.environ["HF_EXT_PEER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hf_ext" / "peer"


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"transformers=={version}",
        "-d",
        str(into),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    tarballs = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if done.returncode != 0 or not tarballs:
        raise RuntimeError(
            f"Could not download transformers=={version}'s source distribution from PyPI "
            f"(`{' '.join(cmd)}` exited {done.returncode}: {done.stderr.strip()[-500:]}). Download "
            f"transformers-{version}.tar.gz by hand and point HF_EXT_PEER_SDIST at it."
        )
    return tarballs[0]


def _extract_tests(tarball: Path, version: str, target: Path) -> None:
    """Extract ``transformers-<version>/tests/*.py`` of ``tarball`` into ``target/tests``, atomically."""
    prefix = f"transformers-{version}/tests/"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            if not any(m.name == prefix + "test_modeling_common.py" for m in members):
                raise RuntimeError(f"{tarball} has no {prefix}test_modeling_common.py: not a transformers sdist?")
            for m in members:
                m.name = "tests/" + m.name[len(prefix) :]
            tar.extractall(staging, members=members, filter="data")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def transformers_sdist_root() -> Path:
    """Folder holding ``tests/`` of the installed transformers' source distribution (fetched once, then cached)."""
    version = transformers.__version__
    root = _cache_root() / f"transformers-{version}"
    if not (root / "tests" / "test_modeling_common.py").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        if os.environ.get("HF_EXT_PEER_SDIST"):
            _extract_tests(Path(os.environ["HF_EXT_PEER_SDIST"]), version, root)
        else:
            with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
                _extract_tests(_download_sdist(version, Path(tmp)), version, root)
    # transformers' repository has an empty tests/__init__.py that the distribution leaves out; the configuration
    # mixin imports it by path (`direct_transformers_import(Path(__file__).parent)`)
    init = root / "tests" / "__init__.py"
    if not init.exists():
        init.write_text("")
    # the pipeline mixin imports `<root>/src/transformers` by path: the installed package
    link = root / "src" / "transformers"
    installed = Path(transformers.__file__).resolve().parent
    if not link.exists() or link.resolve() != installed:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(installed, target_is_directory=True)
    return root


def _install_tests_package() -> None:
    root = transformers_sdist_root()
    existing = sys.modules.get("tests")
    if existing is not None and str(root / "tests") in list(getattr(existing, "__path__", [])):
        return
    package = types.ModuleType("tests")
    package.__path__ = [str(root / "tests"), str(STANDINS)]
    package.__package__ = "tests"
    sys.modules["tests"] = package
    # the pipeline mixin reads `<TRANSFORMERS_TINY_MODEL_PATH>/reports/tiny_model_summary.json` at import time
    from peer_utils import tiny_model_dir

    os.environ["TRANSFORMERS_TINY_MODEL_PATH"] = str(tiny_model_dir())


# Auto class -> the name table transformers lists its own models in (what the mixins consult by class name)
_NAME_TABLES = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
}


def _list_hf_ext_models_like_native_ones() -> None:
    """Add hf_ext's registered classes to transformers' class-name tables, as a model in transformers is listed.

    The mixins decide by class name which heads get ``labels`` (``_prepare_for_class``), which are base models
    (``test_training``), which are causal LMs (``test_causal_lm_loss_honors_shift_labels``). The Auto classes
    themselves resolve hf_ext's models through ``register`` as before: a table entry whose model type has no entry in
    ``CONFIG_MAPPING_NAMES`` is never imported through it.
    """
    from transformers.models.auto import modeling_auto

    import hf_ext.models  # noqa: F401  (registers every model family)
    import hf_ext.trainers.elv  # noqa: F401  (registers the ELV predictor)
    from hf_ext.models._registry import registered_models

    for model_type, entry in registered_models().items():
        for auto_name, model_class in entry["models"].items():
            table = _NAME_TABLES.get(auto_name)
            if table is not None:
                getattr(modeling_auto, table).setdefault(model_type, model_class.__name__)


sys.path.insert(0, str(HERE))
_install_tests_package()
_list_hf_ext_models_like_native_ones()
