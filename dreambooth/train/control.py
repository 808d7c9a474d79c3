"""What the outside world and a running training loop share: requests in, live status out.

Buttons (UI, REST, CLI signals) only set requests; the loop honours them at step boundaries. The loop
only writes the status; readers take a consistent copy with `snapshot()`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class TrainStatus:
    state: str = "idle"  # idle | waiting | preparing | training | sampling | saving | paused | done | canceled | failed
    model_name: str = ""
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    lr: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    memory_mb: float | None = None  # VRAM on CUDA, process RSS otherwise
    memory_kind: str = ""  # what memory_mb measures: "VRAM" or "RAM (RSS)"
    message: str = ""
    detail: str = ""  # progress within a long phase: "encoding images 3/8", "image 1 of 2, step 4 of 10"
    samples: list[str] = field(default_factory=list)  # latest sample image paths
    charts: list[str] = field(default_factory=list)  # latest chart image paths
    checkpoints: list[str] = field(default_factory=list)  # single-file checkpoints written this run
    log: list[str] = field(default_factory=list)  # recent log lines, newest last
    started_at: float | None = None
    finished_at: float | None = None


class TrainControl:
    """Thread-safe requests and status for one training run."""

    MAX_LOG_LINES = 500

    def __init__(self, on_log: Callable[[str], None] | None = None):
        self._lock = threading.Lock()
        self._status = TrainStatus()
        self.cancel_requested = threading.Event()
        self.sample_requested = threading.Event()
        self.save_requested = threading.Event()
        self._requested_export: dict = {}  # Half / subdir as on screen when Generate Ckpt asked for the save
        self._on_log = on_log

    # requests -------------------------------------------------------------------------------------
    def request_cancel(self) -> None:
        self.cancel_requested.set()

    def request_samples(self) -> None:
        self.sample_requested.set()

    def request_save(self, half: bool | None = None, subdir: bool | None = None) -> None:
        """A checkpoint at the next step; `half`/`subdir` (None: the saved params) as ticked on screen."""
        with self._lock:
            self._requested_export = {"half": half, "subdir": subdir}
        self.save_requested.set()

    def take_save_request(self) -> dict | None:
        """The pending request's export choices (and clear it), or None when no save was asked for."""
        if not self.save_requested.is_set():
            return None
        with self._lock:
            export, self._requested_export = self._requested_export, {}
        self.save_requested.clear()
        return export

    # status ---------------------------------------------------------------------------------------
    def update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._status, key, value)

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with self._lock:
            self._status.log.append(line)
            del self._status.log[:-self.MAX_LOG_LINES]
            self._status.message = message
        if self._on_log is not None:
            self._on_log(message)

    def pause(self, seconds: float) -> None:
        """The loop's pause between epochs: wait, saying the time left each second; Cancel ends it early."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.update(detail=f"{left:.0f} s left")
            if self.cancel_requested.wait(min(1.0, left)):
                return

    def snapshot(self) -> TrainStatus:
        with self._lock:
            return TrainStatus(**{k: (list(v) if isinstance(v, list) else v)
                                  for k, v in asdict(self._status).items()})
