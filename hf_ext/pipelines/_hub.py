"""Loading hf_ext pipelines from a Hub repository id."""

from __future__ import annotations

import os

from huggingface_hub import snapshot_download

__all__ = ["HubSnapshotMixin"]


class HubSnapshotMixin:
    """``from_pretrained(repo_id)`` for diffusers pipelines whose components live in hf_ext.

    diffusers records a component from another package (e.g. ``text_projection``) by its full module path in
    ``model_index.json``. From a local folder it imports that module; from a Hub repository id it instead looks for
    ``<component>/<module>.py`` *remote code* in the repository and fails. hf_ext's pipelines therefore download the
    repository first (``snapshot_download``, honouring ``revision``, ``token``, ``cache_dir``, ``local_files_only``
    and ``force_download``) and load the local snapshot, so ``VisCPMPaintPipeline.from_pretrained("me/paint")``
    works like any diffusers pipeline.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            path = snapshot_download(
                path,
                revision=kwargs.pop("revision", None),
                token=kwargs.get("token"),
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=kwargs.get("local_files_only", False),
                force_download=kwargs.get("force_download", False),
            )
        return super().from_pretrained(path, **kwargs)
