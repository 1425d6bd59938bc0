"""Stand-in for transformers' ``tests/exporters/test_export.py`` (not shipped in the source distribution).

``ModelTesterMixin`` inherits ``ExportTesterMixin`` for its ``torch.export`` tests. The real mixin cannot be had, so
this is hf_ext's own check, modelled on it: every model class (``test_torch_exportable``) exports with
``torch.export.export`` on the tester's inputs, and the exported program gives the eager outputs.
"""

from __future__ import annotations

import copy
import inspect

import torch
from transformers.testing_utils import torch_device


def _first_tensor(output):
    for key in ("logits", "last_hidden_state"):
        value = output.get(key) if hasattr(output, "get") else None
        if isinstance(value, torch.Tensor):
            return value
    return output[0]


class ExportTesterMixin:
    def test_torch_export(self):
        if not getattr(self, "test_torch_exportable", True):
            self.skipTest(reason="the tester marks this model as not exportable (see docs/conformance.md)")
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with self.subTest(model_class.__name__):
                torch.manual_seed(0)
                model = model_class(copy.deepcopy(config)).to(torch_device).eval()
                inputs = self._prepare_for_class(inputs_dict, model_class)
                # the forward pass without a cache (a cache object is no pytree output): every model that names
                # `use_cache`, or takes it through `**kwargs` for its language model (Muffin, VisCPM-Chat)
                params = inspect.signature(model.forward).parameters
                takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
                if "use_cache" in params or (takes_kwargs and hasattr(config.get_text_config(), "use_cache")):
                    inputs["use_cache"] = False
                with torch.no_grad():
                    eager = _first_tensor(model(**inputs))
                    program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                    exported = _first_tensor(program.module()(**inputs))
                torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)
