"""ELV's explanation-augmented predictor (model type ``elv_predictor``): an encoder over ``[input; explanation]``.

It lives under ``models/`` (not with the ELV trainer) so registering it with the Auto classes imports no training
code; :mod:`hf_ext.trainers.elv` re-exports it.
"""

from .._registry import register_model
from .configuration_elv_predictor import ELVPredictorConfig
from .modeling_elv_predictor import ELVPredictorModel, ELVPredictorOutput

# Lets AutoConfig / AutoModel load a saved predictor folder (``predictor/`` of an ELV repository).
register_model("elv_predictor", ELVPredictorConfig, {"AutoModel": ELVPredictorModel})

__all__ = ["ELVPredictorConfig", "ELVPredictorModel", "ELVPredictorOutput"]
