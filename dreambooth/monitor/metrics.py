"""Per-step metrics (loss, learning rate, memory) in `logging/metrics.jsonl`.

Loss values stay on the device until a flush, so the loop does not wait for the device every step.
The same rows go to a TensorBoard events file in the same folder (monitor/tensorboard.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from ..platform.fsutil import atomic_path
from .tensorboard import EventWriter

METRICS_FILE = "metrics.jsonl"


def tensorboard_scalars(row: dict) -> dict[str, float]:
    """A metrics row as TensorBoard tags; memory is tagged RAM or VRAM, as it measures one or the other."""
    memory = "VRAM" if row.get("memory_kind", "").startswith("VRAM") else "RAM"
    scalars = {"train/loss": row["loss"], "train/lr": row["lr"], f"memory/{memory}_MB": row["memory_mb"]}
    if row.get("prior_loss"):
        scalars["train/prior_loss"] = row["prior_loss"]
    return scalars


def memory_mb(device) -> float:
    """Allocated VRAM on CUDA, the process's resident memory otherwise."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        import psutil
    except ImportError:
        import resource  # peak rather than current, but always there on Linux/macOS

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return psutil.Process().memory_info().rss / 2**20


class MetricsLog:
    """`keep_until` None: a fresh run, the file starts empty (charts never overlay runs). A step number: a
    resumed run, which keeps the rows up to that step (rows the interrupted run logged after its snapshot
    are dropped, since those steps run again) and any torn last line of a killed run."""

    def __init__(self, folder: Path, keep_until: int | None = None, warn: Callable[[str], None] | None = None,
                 owner: bool = True):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / METRICS_FILE
        self._pending: list[tuple[dict, dict]] = []
        self.events = None
        if not owner:  # the other processes of a data-parallel run never write the file
            return
        self.events = EventWriter(folder, fresh=keep_until is None)
        kept = [] if keep_until is None else [row for row in read_metrics(folder, warn)
                                                if row.get("step", 0) <= keep_until]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")

    def add(self, loss, prior_loss=0.0, **values) -> None:
        """Queue one step's values; `loss` and `prior_loss` may be device tensors (read at flush)."""
        measured = {"loss": loss, "prior_loss": prior_loss}
        self._pending.append((values, {k: v.detach() if hasattr(v, "detach") else v for k, v in measured.items()}))

    def discard(self) -> list[dict]:
        """Drop the queued rows (processes other than the main one never write the file)."""
        self._pending.clear()
        return []

    def flush(self) -> list[dict]:
        """Write the queued rows and return them with plain float losses."""
        if not self._pending:
            return []
        import torch

        names = list(self._pending[0][1])
        stacked = torch.stack([torch.stack([torch.as_tensor(measured[n], dtype=torch.float32).cpu() for n in names])
                               for _, measured in self._pending]).tolist()  # one device sync for all rows
        rows = [dict(values, **dict(zip(names, row))) for (values, _), row in zip(self._pending, stacked)]
        self._pending.clear()
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
        if self.events is not None:
            self.events.add([(row["step"], tensorboard_scalars(row)) for row in rows])
        return rows


def read_metrics(folder: Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The logged rows. A line that is not a JSON object (the torn last line of a killed run) is skipped
    with a warning through `warn` (default: the "dreambooth" logger), never an error."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        message = (f"{path}: skipped {len(bad)} unreadable line(s) (line {', '.join(map(str, bad[:5]))}; "
                   "a run killed while writing leaves a torn last line)")
        (warn or logging.getLogger("dreambooth").warning)(message)
    return rows
