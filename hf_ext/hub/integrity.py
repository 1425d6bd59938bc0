"""Opt-in integrity check of saved weights (documented public path): re-exports :mod:`hf_ext.utils.integrity`.

The implementation lives in ``hf_ext.utils`` because checkpointing (``hf_ext.utils.checkpointing``) writes the
manifest too, and utils must not depend on hub.
"""

from ..utils.integrity import *  # noqa: F401,F403
from ..utils.integrity import __all__  # noqa: F401
