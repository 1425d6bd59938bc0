"""Stand-in for transformers' ``tests/exporters/test_export.py`` (not shipped in the source distribution).

``ModelTesterMixin`` inherits ``ExportTesterMixin`` for its ``torch.export`` tests. The real mixin cannot be had, so
this one is empty; hf_ext's own export check is ``tests_peer/peer_utils.py::ExportCheckMixin``.
"""


class ExportTesterMixin:
    pass
