"""Loss, learning-rate and memory charts as PNG files in the model's logging/ folder."""
from __future__ import annotations

from pathlib import Path

from ..platform.fsutil import atomic_path
from .metrics import read_metrics

SMOOTHING_WINDOW = 50


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_charts(logging_dir: Path, model_name: str = "") -> list[Path]:
    """Redraw the charts from metrics.jsonl; returns the PNG paths (none before the first step)."""
    rows = read_metrics(logging_dir)
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")  # no display; never open a window
    from matplotlib.figure import Figure

    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    window = max(1, min(SMOOTHING_WINDOW, len(rows) // 5 or 1))
    charts = [
        ("loss", "Loss", [(losses, "loss", 0.35), (moving_average(losses, window), f"average of {window}", 1.0)]),
        ("lr", "Learning rate", [([row["lr"] for row in rows], "learning rate", 1.0)]),
        ("memory", "Memory (MB)", [([row["memory_mb"] for row in rows], rows[-1].get("memory_kind", "memory"), 1.0)]),
    ]
    written = []
    for key, title, series in charts:
        figure = Figure(figsize=(6, 3.2), dpi=100)
        axes = figure.add_subplot()
        for values, label, alpha in series:
            axes.plot(steps, values, label=label, alpha=alpha, linewidth=1.2)
        axes.set_title(f"{model_name} {title}".strip())
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.legend(loc="upper right")
        figure.tight_layout()
        path = logging_dir / f"{key}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        written.append(path)
    return written
