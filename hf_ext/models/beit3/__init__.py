"""BEiT-3 (model type ``beit3``): a multiway vision-language Transformer, usable alone and as Muffin's bridge."""

from .._registry import register_model
from .configuration_beit3 import Beit3Config
from .modeling_beit3 import Beit3Model, Beit3ModelOutput, Beit3PreTrainedModel

register_model("beit3", Beit3Config, models={"AutoModel": Beit3Model})

__all__ = ["Beit3Config", "Beit3Model", "Beit3ModelOutput", "Beit3PreTrainedModel"]
