"""BEiT-3 (model type ``beit3``): a multiway vision-language Transformer, usable alone and as Muffin's bridge."""

from .._registry import register_model
from .configuration_beit3 import Beit3Config
from .modeling_beit3 import Beit3Model, Beit3ModelOutput, Beit3PreTrainedModel

register_model("beit3", Beit3Config, models={"AutoModel": Beit3Model})


def tiny_beit3_config(**overrides) -> Beit3Config:
    """A tiny random-init BEiT-3 config for tests and demos (hidden 32, 2 layers, 32 px images, patch 16)."""
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        vocab_size=64,
        max_position_embeddings=40,
    )
    kwargs.update(overrides)
    return Beit3Config(**kwargs)


__all__ = ["Beit3Config", "Beit3Model", "Beit3ModelOutput", "Beit3PreTrainedModel", "tiny_beit3_config"]
