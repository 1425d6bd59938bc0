"""Shared helpers for the diffusers-style training-script tests (test_viscpm_paint.py, test_iap.py; not collected)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def import_example(relative_path: str) -> ModuleType:
    """Import a script under ``examples/`` (not a package) as a module, e.g. ``"iap/train_iap.py"``."""
    path = ROOT / "examples" / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(script: ModuleType, args: list[str]) -> Path:
    """Run a training script in-process, as ``python script.py *args`` would."""
    return script.main(script.parse_args(args))


def write_imagefolder(path: Path, rows: list[dict], size: tuple[int, int]) -> Path:
    """An ``imagefolder``: one random RGB image of ``size`` (height, width) per row, seeded, plus
    ``metadata.jsonl`` with the row's columns."""
    path.mkdir()
    rng = np.random.default_rng(0)
    with open(path / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", **row}, ensure_ascii=False) + "\n")
    return path


def copy_checkpoint(checkpoint: Path, output_dir: Path) -> Path:
    """A fresh ``output_dir`` holding only a copy of ``checkpoint`` (to resume from with ``latest``)."""
    output_dir.mkdir()
    shutil.copytree(checkpoint, output_dir / checkpoint.name)
    return output_dir
