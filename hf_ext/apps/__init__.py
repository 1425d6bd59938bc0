"""Browser apps on top of hf_ext's models (Gradio, the optional ``apps`` extra).

* :mod:`hf_ext.apps.annotate`: ``hf-ext annotate``, segment-level correction of a VLM's answers into RLHF-V data
  (:class:`~hf_ext.apps.annotation_store.AnnotationStore`, :class:`~hf_ext.apps.corrections.SegmentCorrection`);
* :mod:`hf_ext.apps.demos`: ``hf-ext app chat|paint|poetry|vae``, one small demo per model family, and
  :func:`~hf_ext.apps.space.export_space` to turn any of them into a Hugging Face Space folder.

Only the store and the correction model import without Gradio.
"""
