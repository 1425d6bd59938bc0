"""The Hub behaviour of hf_ext's models is applied from one place, :func:`hf_ext.hub.apply_hub_behaviour`, through a
listener on the model registry (the registry itself knows nothing of the Hub): every family registered before or after
``import hf_ext`` gets it, and so does VisCPM-Chat's CPM-Bee variant, which no Auto class maps to."""

import json
import sys

import pytest
import torch

import hf_ext  # noqa: F401  (registers the models and installs the Hub behaviour)
from hf_ext.hub import apply_hub_behaviour
from hf_ext.models import _registry


@pytest.fixture
def listeners(monkeypatch):
    """The registry's listener list, restored after the test."""
    monkeypatch.setattr(_registry, "_LISTENERS", list(_registry._LISTENERS))
    monkeypatch.setattr(_registry, "_REGISTERED", dict(_registry._REGISTERED))
    return _registry._LISTENERS


_MODEL_SOURCE = """
import torch
from transformers import PretrainedConfig, PreTrainedModel


class LateConfig(PretrainedConfig):
    model_type = "{model_type}"


class LateModel(PreTrainedModel):
    config_class = LateConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(3, 3)
        self.post_init()
"""


def _tiny_config_and_model_classes(model_type: str, tmp_path, monkeypatch):
    """A fresh config/model pair in a module of its own (new classes each call, so no earlier wrapping leaks in)."""
    import importlib

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{model_type}.py").write_text(_MODEL_SOURCE.format(model_type=model_type))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(model_type)
    monkeypatch.delitem(sys.modules, model_type)
    return module.LateConfig, module.LateModel


def test_the_hub_listener_is_installed_once():
    assert _registry._LISTENERS.count(apply_hub_behaviour) == 1


def test_listener_sees_past_and_future_registrations(listeners, tmp_path, monkeypatch):
    seen = []

    def record(model_type, entry):
        seen.append((model_type, entry["config"]))

    _registry.add_registration_listener(record)
    _registry.add_registration_listener(record)  # a second add is a no-op
    past = [(t, e["config"]) for t, e in _registry.registered_models().items()]
    assert seen == past and {"muffin", "viscpm_chat", "elv_predictor", "cpmbee"} <= {t for t, _ in seen}

    config_class, model_class = _tiny_config_and_model_classes("hf_ext_late_listener", tmp_path, monkeypatch)
    _registry.register_model("hf_ext_late_listener", config_class, models={"AutoModel": model_class})
    assert seen == [*past, ("hf_ext_late_listener", config_class)]


def test_a_family_registered_after_import_gets_the_hub_behaviour(listeners, tmp_path, monkeypatch):
    """Registered now, long after ``import hf_ext``: code export, safetensors-only loading, the weights manifest."""
    config_class, model_class = _tiny_config_and_model_classes("hf_ext_late_family", tmp_path / "src", monkeypatch)
    assert not getattr(model_class.from_pretrained, "_hf_ext_safe", False)
    _registry.register_model("hf_ext_late_family", config_class, models={"AutoModel": model_class})

    model = model_class(config_class())
    model.save_pretrained(tmp_path / "ok")
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "hf_ext_late_family.LateConfig",
        "AutoModel": "hf_ext_late_family.LateModel",
    }
    assert (tmp_path / "ok" / "hf_ext_late_family.py").is_file()
    manifest = json.loads((tmp_path / "ok" / "weights_manifest.json").read_text())
    assert "model.safetensors" in json.dumps(manifest)

    pickled = tmp_path / "pickled"
    config_class().save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="use_safetensors=False"):
        model_class.from_pretrained(pickled)
    loaded = model_class.from_pretrained(pickled, use_safetensors=False)
    assert torch.equal(loaded.proj.weight, model.proj.weight)


def test_viscpm_chat_bee_variant_gets_the_hub_behaviour(tmp_path):
    """``VisCPMChatForConditionalGeneration`` builds a ``VisCPMChatBeeForConditionalGeneration`` for a CPM-Bee LLM;
    saving it ships the code (with the Bee module) and an ``auto_map``, and loading it is safetensors-only."""
    from hf_ext.models.cpmbee import CpmBeeConfig
    from hf_ext.models.viscpm_chat import (
        VisCPMChatBeeForConditionalGeneration,
        VisCPMChatConfig,
        VisCPMChatForConditionalGeneration,
    )

    text = CpmBeeConfig(vocab_size=100, hidden_size=32, dim_ff=64, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32)
    config = VisCPMChatConfig(
        vision_config={**vision, "patch_size": 16, "vocab_size": 64, "max_position_embeddings": 16},
        text_config=text.to_dict(),
        num_query=4,
        projector_type="mlp2",
        image_token_id=5,
    )
    torch.manual_seed(0)
    model = VisCPMChatForConditionalGeneration(config)
    assert type(model) is VisCPMChatBeeForConditionalGeneration
    model.save_pretrained(tmp_path / "bee")
    saved = json.loads((tmp_path / "bee" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForImageTextToText"] == (
        "modeling_viscpm_chat.VisCPMChatForConditionalGeneration"
    )
    assert (tmp_path / "bee" / "modeling_viscpm_chat_bee.py").is_file()
    assert (tmp_path / "bee" / "weights_manifest.json").is_file()

    loaded = VisCPMChatBeeForConditionalGeneration.from_pretrained(tmp_path / "bee")
    state, ref = loaded.state_dict(), model.state_dict()
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)

    pickled = tmp_path / "pickled"
    config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="use_safetensors=False"):
        VisCPMChatBeeForConditionalGeneration.from_pretrained(pickled)


def test_models_registry_imports_nothing_of_the_hub():
    """The registry module on its own: importing it (as remote code or a plugin would) loads no hf_ext.hub module
    beyond what ``import hf_ext`` installs after registration."""
    source = _registry.__file__
    with open(source, encoding="utf-8") as f:
        text = f.read()
    assert "import" in text and "hub" not in {
        part for line in text.splitlines() if line.lstrip().startswith(("import ", "from ")) for part in line.split()
    }
    assert "hf_ext.hub" in sys.modules  # installed by `import hf_ext`, from the hub side
