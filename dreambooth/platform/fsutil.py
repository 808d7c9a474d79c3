"""Atomic file output: everything is written under a temporary name and renamed into place.

A crash, a kill or a full disk therefore leaves either the old file or the new one, never half of one.
The finished files and folders get the modes the user's umask gives (as `open()` and `mkdir()` would),
not the private 0600/0700 of mkstemp/mkdtemp: the WebUI's own checkpoints are 0664 under umask 002.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from .diskspace import disk_guard

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask. POSIX can only read it by setting it, so set it back at once, under a lock."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, need: int | None = None) -> Iterator[Path]:
    """`_atomic_path` with a full disk as one line naming the folder; `need`: the bytes it will take,
    checked before anything is written (diskspace)."""
    with disk_guard(Path(path).parent, need, f"writing {Path(path).name}"), _atomic_path(path) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; on success it replaces `path`, on error it is removed.

    For writers that insist on a file name (safetensors, torch.save, PIL). The suffix is kept so that
    writers choosing a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, path.suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(0o666 & ~current_umask())  # after the writer: some (safetensors) replace the file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, need: int | None = None) -> Iterator[Path]:
    """`_atomic_dir` with a full disk as one line naming the folder; `need` as for atomic_path."""
    with disk_guard(Path(path).parent, need, f"writing {Path(path).name}/"), _atomic_dir(path) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to `path`; on success it replaces `path` as a whole.

    The old directory (if any) is moved aside first and deleted only after the new one is in place, so
    at every moment one complete version exists on disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
