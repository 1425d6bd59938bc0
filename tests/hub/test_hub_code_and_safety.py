"""Remote-code export: code files + auto_map written by save_pretrained, loadable where hf_ext is absent."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def __init__(self, names):
            self.names = names

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ImportError(f"{name} is blocked in this test process")
            return None

    sys.meta_path.insert(0, _Block({BLOCKED!r}))
    """
)


def run_without(blocked: set[str], body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter in which the top-level packages ``blocked`` cannot be imported."""
    code = BLOCKER.replace("{BLOCKED!r}", repr(sorted(blocked))) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _write_pkg(root):
    """A package with two model folders; `top` imports `base` across folders, as Muffin imports BEiT-3."""
    files = {
        "rcpkg/__init__.py": "",
        "rcpkg/models/__init__.py": "",
        "rcpkg/models/base/__init__.py": "",
        "rcpkg/models/base/modeling_base.py": """
            import torch

            class BaseBlock(torch.nn.Module):
                def __init__(self, d):
                    super().__init__()
                    self.lin = torch.nn.Linear(d, d)

                def forward(self, x):
                    return torch.tanh(self.lin(x))
        """,
        "rcpkg/models/top/__init__.py": "",
        "rcpkg/models/top/configuration_top.py": """
            from transformers import PretrainedConfig

            class TopConfig(PretrainedConfig):
                model_type = "rc_top"

                def __init__(self, hidden=8, **kwargs):
                    self.hidden = hidden
                    super().__init__(**kwargs)
        """,
        "rcpkg/models/top/modeling_top.py": """
            from transformers import PreTrainedModel

            from ..base.modeling_base import BaseBlock
            from .configuration_top import TopConfig

            class TopModel(PreTrainedModel):
                config_class = TopConfig

                def __init__(self, config):
                    super().__init__(config)
                    self.block = BaseBlock(config.hidden)
                    self.post_init()

                def forward(self, x):
                    return self.block(x)
        """,
    }
    for rel, src in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src))


@pytest.fixture
def rcpkg(tmp_path, monkeypatch):
    _write_pkg(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from rcpkg.models.top.configuration_top import TopConfig
    from rcpkg.models.top.modeling_top import TopModel

    from hf_ext.models import _registry

    monkeypatch.setattr(_registry, "_REGISTERED", dict(_registry._REGISTERED))  # rc_top is gone after the test
    _registry.register_model("rc_top", TopConfig, models={"AutoModel": TopModel})
    yield TopConfig, TopModel
    for name in [m for m in sys.modules if m.startswith("rcpkg")]:
        del sys.modules[name]


def test_collect_code_files_rewrites_cross_folder_imports(rcpkg):
    from hf_ext.hub.remote_code import collect_code_files

    _, TopModel = rcpkg
    files = collect_code_files([TopModel])
    assert set(files) == {"modeling_top.py", "modeling_base.py", "configuration_top.py"}
    assert "from .modeling_base import BaseBlock" in files["modeling_top.py"]
    assert "..base" not in files["modeling_top.py"]


def test_save_pretrained_ships_code_and_loads_without_the_package(rcpkg, tmp_path):
    TopConfig, TopModel = rcpkg
    model = TopModel(TopConfig(hidden=8)).eval()
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_top.TopConfig", "AutoModel": "modeling_top.TopModel"}
    x = torch.randn(2, 8)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    proc = run_without(
        {"hf_ext", "rcpkg"},
        f"""
        import torch
        from transformers import AutoModel
        try:
            import rcpkg
            raise SystemExit("rcpkg should not be importable here")
        except ImportError:
            pass
        m = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        assert type(m).__name__ == "TopModel", type(m)
        assert torch.equal(m(io["x"]), io["y"])
        print("REMOTE_OK")
        """,
    )
    assert "REMOTE_OK" in proc.stdout, proc.stderr[-3000:]


def test_absolute_hf_ext_import_is_refused(tmp_path, monkeypatch):
    from hf_ext.hub.remote_code import RemoteCodeError, collect_code_files

    pkg = tmp_path / "badpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "modeling_bad.py").write_text("from hf_ext.utils.io import atomic_write\n\nclass Bad:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from badpkg.modeling_bad import Bad

    with pytest.raises(RemoteCodeError, match="imports hf_ext absolutely"):
        collect_code_files([Bad])


# --------------------------------------------------------------------------- safety


def _save_pickle_only(model, path):
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")


def test_pickle_weights_refused_unless_opted_in(rcpkg, tmp_path):
    TopConfig, TopModel = rcpkg
    model = TopModel(TopConfig(hidden=8)).eval()
    _save_pickle_only(model, tmp_path)
    with pytest.raises(OSError, match="use_safetensors=False"):
        TopModel.from_pretrained(tmp_path)
    loaded = TopModel.from_pretrained(tmp_path, use_safetensors=False)
    x = torch.randn(1, 8)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_weights_give_a_clear_error(rcpkg, tmp_path, damage):
    from hf_ext.hub.safe_loading import CorruptCheckpointError

    TopConfig, TopModel = rcpkg
    TopModel(TopConfig(hidden=8)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 4)
    with pytest.raises(CorruptCheckpointError, match="corrupted or truncated"):
        TopModel.from_pretrained(tmp_path)


def test_saved_checkpoints_contain_no_pickle(rcpkg, tmp_path):
    TopConfig, TopModel = rcpkg
    TopModel(TopConfig(hidden=8)).save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))}


def test_hub_errors_are_clear(rcpkg, local_hub):
    import uuid

    from huggingface_hub import HfApi

    from hf_ext.hub.safe_loading import CorruptCheckpointError

    TopConfig, TopModel = rcpkg
    repo = f"tester/safety-{uuid.uuid4().hex[:8]}"
    model = TopModel(TopConfig(hidden=8))
    model.push_to_hub(repo)
    files = set(HfApi().list_repo_files(repo))
    assert {"config.json", "model.safetensors", "modeling_top.py", "modeling_base.py"} <= files
    # transformers turns the Hub's RevisionNotFound / RepoNotFound answers into OSErrors that say what is wrong
    with pytest.raises(OSError, match="no-such-revision is not a valid git identifier"):
        TopModel.from_pretrained(repo, revision="no-such-revision")
    with pytest.raises(OSError, match="is not a valid model identifier"):
        TopModel.from_pretrained(f"tester/absent-{uuid.uuid4().hex[:8]}")
    # weights missing from a repository: a clear OSError naming the repository
    empty = f"tester/empty-{uuid.uuid4().hex[:8]}"
    TopConfig(hidden=8).push_to_hub(empty)
    with pytest.raises(OSError, match=empty):
        TopModel.from_pretrained(empty)
    # bytes corrupted on the server after the upload
    local_hub.corrupt_file(repo, "model.safetensors", b"\x00" * 40)
    with pytest.raises((CorruptCheckpointError, OSError)) as err:
        TopModel.from_pretrained(repo, force_download=True)
    assert "corrupt" in str(err.value).lower() or "consistency" in str(err.value).lower()
