"""One writer per model across processes: `<model>/.dreambooth.lock`.

Train, Generate Ckpt, Create and params writes hold the lock; a second caller (another CLI run, the tab
or the API of another server, or another thread here) is refused with a message naming the holder.

The exclusion itself is an operating-system lock on the open file (flock; msvcrt on Windows), which the
kernel drops the moment its holder exits or is killed: a dead holder's lock is taken over by the next
caller, and a reused pid can never keep a model locked. The file holds the holder's pid, process start
time, host name and action, for the refusal message. It stays in place (deleting it would race with
the next caller), emptied on release.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ..errors import DreamboothError

LOCK_FILE = ".dreambooth.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

_WINDOWS_LOCK_OFFSET = 1 << 30  # msvcrt locks bytes; lock one far past the info so readers can read it


class ModelBusyError(DreamboothError):
    """The model is locked by another process or job. `field` is "job", so the API answers 409."""

    def __init__(self, message: str):
        super().__init__(message, field="job")


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, getattr(errno, "EDEADLOCK", -1)):
            return False
        raise DreamboothError(f"cannot lock the model folder ({error}): its filesystem offers no file locks; "
                              "keep the models on a local disk (--models-dir)", field="models_dir") from None
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _process_started() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def _holder_info(action: str) -> dict:
    return {"pid": os.getpid(), "process_started": _process_started(), "host": socket.gethostname(),
            "action": action, "since": time.time()}


def _read_info(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(info: dict) -> str:
    if not info.get("pid"):
        return "another process (it has not written its details yet)"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    here = " (this process)" if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname() else ""
    return f"{info.get('action', 'a job')} by pid {info['pid']}{here} on {info.get('host', '?')} since {when}"


def _holder_details(path: Path, wait_s: float = 1.0) -> dict:
    """The holder's details; a holder that has just taken the lock writes them a moment later, so wait a little."""
    deadline = time.monotonic() + wait_s
    info = _read_info(path)
    while not info.get("pid") and time.monotonic() < deadline:
        time.sleep(0.05)
        info = _read_info(path)
    return info


def _busy(name: str, path: Path) -> ModelBusyError:
    return ModelBusyError(f"model '{name}' is busy: {describe_holder(_holder_details(path))}. Wait for it to finish "
                          f"(or stop that process); the lock ({path}) is released when its holder exits")


@contextlib.contextmanager
def model_lock(folder: Path, action: str) -> Iterator[None]:
    """Hold the lock of the model in `folder` (created if missing) for the block, or raise ModelBusyError."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides the mode
    try:
        if not _try_lock(fd):
            raise _busy(folder.name, path)
        try:
            data = json.dumps(_holder_info(action)).encode()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            yield
        finally:
            with contextlib.suppress(OSError):  # the folder may be gone (a removed model): nothing to clear
                os.ftruncate(fd, 0)
            _unlock(fd)
    finally:
        os.close(fd)


def holder(folder: Path) -> str | None:
    """Who holds the model's lock (a description), or None when it is free. For early refusals only."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
        return describe_holder(_holder_details(path))
    finally:
        os.close(fd)


def check_free(folder: Path) -> None:
    """Raise ModelBusyError now when the model is locked (the job takes the lock itself later)."""
    path = Path(folder) / LOCK_FILE
    if holder(folder) is not None:
        raise _busy(Path(folder).name, path)


def is_main_process() -> bool:
    """False in the other processes of `accelerate launch` / torchrun: only the main one writes and locks."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("", "0")
