"""Per-step metrics (loss, learning rate, memory) in `logging/metrics.jsonl`.

Loss values stay on the device until a flush, so the loop does not wait for the device every step.
"""
from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


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
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / METRICS_FILE
        self._pending: list[tuple[dict, dict]] = []

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
        return rows


def read_metrics(folder: Path) -> list[dict]:
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
