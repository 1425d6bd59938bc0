"""VisCPM-Paint (OpenBMB/VisCPM) as a diffusers pipeline: :class:`VisCPMPaintPipeline` and its text projection."""

from .modeling_text_projection import VisCPMPaintTextProjection
from .pipeline_viscpm_paint import VisCPMPaintPipeline

__all__ = ["VisCPMPaintPipeline", "VisCPMPaintTextProjection"]
