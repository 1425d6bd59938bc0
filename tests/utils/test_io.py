"""Atomic writes: all or nothing, normal permissions."""

import os
import stat

import pytest

from hf_ext.utils.io import atomic_write


def test_atomic_write_replaces_and_keeps_old_content_on_error(tmp_path):
    path = tmp_path / "cache.json"
    with atomic_write(path, "w") as f:
        f.write("v1")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half-written")
        raise RuntimeError("interrupted")
    assert path.read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left behind


def test_atomic_write_uses_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
