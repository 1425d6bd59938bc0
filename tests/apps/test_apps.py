"""hf_ext.apps without a browser: the CLI wiring (lazy imports), Space export files, clear errors for wrong models."""

import pytest

from hf_ext.cli import SUBCOMMANDS


def test_subcommands_registered_lazily(capsys):
    from hf_ext.cli import main

    # registered as "module:function" strings: `hf-ext --help` imports neither the apps nor Gradio
    assert SUBCOMMANDS["annotate"].run == "hf_ext.apps.annotate:annotate_main"
    assert SUBCOMMANDS["app"].run == "hf_ext.apps.demos:app_main"
    main(["--help"])
    out = capsys.readouterr().out
    assert "annotate" in out and "Demo apps: chat | paint | poetry | vae" in out


def test_export_space_files(tmp_path):
    pytest.importorskip("gradio")
    import gradio

    from hf_ext.apps.space import export_space

    out = export_space("vae", "my-org/della-tiny", tmp_path / "space", requirement="hf_ext[apps] @ git+https://x/y")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    assert (out / "requirements.txt").read_text() == f"hf_ext[apps] @ git+https://x/y\ngradio=={gradio.__version__}\n"
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\ntitle: hf_ext vae: my-org/della-tiny\nsdk: gradio\n")
    assert "models:\n- my-org/della-tiny\n---" in readme
    app = (out / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert "load_app('vae', MODEL)" in app and "'my-org/della-tiny'" in app
    with pytest.raises(ValueError, match="needs a local model folder"):
        export_space("vae", "my-org/della-tiny", tmp_path / "s2", copy_model=True)
    with pytest.raises(ValueError, match="Unknown app"):
        export_space("draw", "x", tmp_path / "s3")


def test_wrong_model_for_app_is_a_clear_error(tmp_path):
    pytest.importorskip("gradio")
    from hf_ext.apps.demos import load_app
    from hf_ext.testing import save_tiny_text_vae

    path = save_tiny_text_vae(tmp_path / "della")
    with pytest.raises(ValueError, match=r"needs a jiuge model; .* is 'della'"):
        load_app("poetry", str(path))
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        load_app("paint", str(path))
    with pytest.raises(ValueError, match="Unknown app"):
        load_app("draw", str(path))
