"""hf_ext model families. Importing this package registers each one with the transformers Auto classes.

Each sub-package follows transformers' layout (``configuration_<name>.py``, ``modeling_<name>.py``,
``processing_<name>.py``) and registers itself in its ``__init__`` through
:func:`hf_ext.models._registry.register_model`. Model code knows nothing of the Hub: :mod:`hf_ext.hub` gives every
registered class its Hub behaviour (remote-code export, safetensors-only loading) through a registry listener.
"""

import importlib

# One entry per model folder; each package's __init__ performs its own Auto registration.
_MODEL_PACKAGES: list[str] = [
    "della",
    "trace",
    "beit3",
    "muffin",
    "cpmbee",
    "viscpm_chat",
    "jiuge",
    "elv_predictor",
]

for _name in _MODEL_PACKAGES:
    importlib.import_module(f"{__name__}.{_name}")
