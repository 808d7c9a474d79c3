"""A full disk is one readable line: the folder, its free space and roughly what the save needs.

`require_space` refuses a save before it starts when its size is known (the sum of its tensors' bytes);
`disk_guard` turns a full-disk failure during a write (OSError ENOSPC/EDQUOT, or the same error raised by
safetensors' writer as text) into that line. The atomic writers remove their temporary files either way,
so nothing half-written is left.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import DreamboothError

MARGIN = 16 * 1024**2  # room kept free beyond the estimate (metadata, logs, the file system's own needs)
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def human(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def free_bytes(folder: Path) -> int:
    """Free space for `folder` (its nearest existing parent when it does not exist yet)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a state dict, an optimizer state or a nest of dicts/lists of them."""
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return obj.element_size() * obj.numel()
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(value) for value in obj)
    return 0


def disk_full_error(folder: Path, need: int | None, what: str) -> DreamboothError:
    try:
        free = f"{human(free_bytes(folder))} free"
    except OSError:
        free = "free space unknown"
    needs = f"{what} needs about {human(need)}" if need else f"{what} needs more than that"
    return DreamboothError(f"not enough disk space in {folder}: {free}, {needs}; free some space or move the "
                           "models folder (--models-dir), then run again — nothing was half-written", field="disk")


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    return any(text in str(error).lower() for text in _FULL_TEXTS)


def require_space(folder: Path, need: int | None, what: str = "this save") -> None:
    if need and free_bytes(folder) < need + MARGIN:
        raise disk_full_error(folder, need, what)


@contextlib.contextmanager
def disk_guard(folder: Path, need: int | None = None, what: str = "this save") -> Iterator[None]:
    """Check the room for `need` bytes first; turn a full-disk failure inside the block into one line."""
    require_space(folder, need, what)
    try:
        yield
    except DreamboothError:
        raise
    except Exception as error:
        if is_disk_full(error):
            raise disk_full_error(folder, need, what) from None
        raise
