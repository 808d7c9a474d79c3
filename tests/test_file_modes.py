"""Files and folders follow the user's umask, as the WebUI's own do (its checkpoints are 0664 under
umask 002); the atomic writers' private temp modes (0600/0700) must not leak into the results."""
from __future__ import annotations

import os
import stat

import pytest

from dreambooth.platform.fsutil import atomic_dir, atomic_write_text

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


@pytest.fixture
def umask_002():
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_folders_get_the_umask_modes(tmp_path, umask_002):
    atomic_write_text(tmp_path / "db_config.json", "{}")
    assert _mode(tmp_path / "db_config.json") == 0o664
    with atomic_dir(tmp_path / "working") as folder:
        (folder / "model.bin").write_bytes(b"x")
    assert _mode(tmp_path / "working") == 0o775


def test_an_exported_checkpoint_gets_the_umask_mode(tmp_path, umask_002):
    from dreambooth.model.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "Stable-diffusion" / "tiny.safetensors")
    assert _mode(path) == 0o664
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left beside it
