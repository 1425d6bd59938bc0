"""Export an hf_ext demo app as a Hugging Face Space folder (``app.py``, ``requirements.txt``, ``README.md``).

hf-ext app poetry --model my-org/jiuge --export_space spaces/jiuge
hf-ext app chat --model ./tiny-muffin --export_space spaces/chat --copy_model   # self-contained
huggingface-cli upload my-org/jiuge-demo spaces/jiuge . --repo-type space
"""

import os
import shutil
from pathlib import Path

from ..utils.io import atomic_write

__all__ = ["export_space"]

APP_TEMPLATE = '''"""Hugging Face Space: the hf_ext `{app}` demo ({description}) of {model}."""

import os
from pathlib import Path

from hf_ext.apps._common import launch
from hf_ext.apps.demos import load_app

HERE = Path(__file__).resolve().parent
MODEL = str(HERE / "model") if (HERE / "model").is_dir() else {model!r}

demo = load_app({app!r}, MODEL)

if __name__ == "__main__":
    launch(
        demo,
        host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
'''

README_TEMPLATE = """---
title: {title}
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
{models}---

# {title}

The hf_ext `{app}` demo ({description}) of `{model}`, exported with
`hf-ext app {app} --model {model} --export_space DIR`. Run it locally with `python app.py`
(`GRADIO_SERVER_PORT` / `GRADIO_SERVER_NAME` choose the address).
"""


def export_space(
    app: str,
    model: str,
    out_dir: str | os.PathLike,
    copy_model: bool = False,
    requirement: str = "hf_ext[apps]",
) -> Path:
    """Write a Space folder running the ``app`` demo of ``model``; returns the folder.

    Args:
        app (`str`): ``"chat"``, ``"paint"``, ``"poetry"`` or ``"vae"``.
        model (`str`): a Hub id (downloaded by the Space at start) or a local folder.
        out_dir (`str` or `os.PathLike`): the Space folder (created; existing files with the same names replaced).
        copy_model (`bool`, *optional*, defaults to `False`): copy a local ``model`` folder into ``out_dir/model``,
            which ``app.py`` prefers, so the Space is self-contained.
        requirement (`str`, *optional*, defaults to `"hf_ext[apps]"`): how the Space installs hf_ext (e.g. a
            ``git+https://...`` URL of your fork).
    """
    import gradio

    from .demos import APPS

    if app not in APPS:
        raise ValueError(f"Unknown app {app!r}; choose from {sorted(APPS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    local = Path(model).is_dir()
    if copy_model:
        if not local:
            raise ValueError(f"--copy_model needs a local model folder; {model!r} is not one.")
        target = out / "model"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model, target)
    model_ref = Path(model).name if local else model
    description = APPS[app]
    with atomic_write(out / "app.py", "w") as f:
        source = str(Path(model).resolve()) if local else model
        f.write(APP_TEMPLATE.format(app=app, model=source, description=description))
    with atomic_write(out / "requirements.txt", "w") as f:
        f.write(f"{requirement}\ngradio=={gradio.__version__}\n")
    title = f"hf_ext {app}: {model_ref}"
    with atomic_write(out / "README.md", "w") as f:
        f.write(
            README_TEMPLATE.format(
                title=title,
                gradio_version=gradio.__version__,
                models="" if local else f"models:\n- {model}\n",
                app=app,
                model=model_ref,
                description=description,
            )
        )
    return out
