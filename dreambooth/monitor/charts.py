"""Loss, learning-rate and memory charts as PNG files in the model's logging/ folder.

Each chart is drawn for the width it is shown at (the tab's output column, about 560 px; a page of its
own), with fonts that stay readable there: one chart per file, the whole step range on the x axis.
"""
from __future__ import annotations

from pathlib import Path

from ..platform.fsutil import atomic_path
from .metrics import read_metrics

SMOOTHING_WINDOW = 50
CHART_FILES = ("loss.png", "lr.png", "memory.png")
FIGURE_INCHES = (6.4, 3.0)
DPI = 100
FONT_SIZE = 11


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def memory_name(kind: str) -> str:
    """What the memory figure measures, as the axis says it."""
    return "VRAM" if kind.startswith("VRAM") else "RAM" if kind.startswith("RAM") else "memory"


def chart_series(rows: list[dict]) -> list[tuple[str, str, str, list]]:
    """(file stem, title, y label, [(values, legend, alpha)]) for each chart."""
    losses = [row["loss"] for row in rows]
    window = max(1, min(SMOOTHING_WINDOW, len(rows) // 5 or 1))
    kind = memory_name(rows[-1].get("memory_kind", ""))
    return [
        ("loss", "Loss", "loss", [(losses, "loss per step", 0.35),
                                  (moving_average(losses, window), f"smoothed (average of {window})", 1.0)]),
        ("lr", "Learning rate", "learning rate", [([row["lr"] for row in rows], "learning rate", 1.0)]),
        ("memory", f"Memory ({kind})", f"{kind} (MB)", [([row["memory_mb"] for row in rows], kind, 1.0)]),
    ]


def draw_charts(logging_dir: Path, model_name: str = "") -> list[Path]:
    """Redraw the charts from metrics.jsonl; returns the PNG paths (none before the first step)."""
    rows = read_metrics(logging_dir)
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")  # no display; never open a window
    from matplotlib.figure import Figure

    steps = [row["step"] for row in rows]
    written = []
    for key, title, ylabel, series in chart_series(rows):
        figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
        axes = figure.add_subplot()
        for values, label, alpha in series:
            axes.plot(steps, values, label=label, alpha=alpha, linewidth=1.6, marker="." if len(steps) < 30 else None)
        axes.set_title(f"{model_name}: {title}" if model_name else title, fontsize=FONT_SIZE + 1)
        axes.set_xlabel("step", fontsize=FONT_SIZE)
        axes.set_ylabel(ylabel, fontsize=FONT_SIZE)
        axes.tick_params(labelsize=FONT_SIZE - 1)
        axes.set_xlim(min(steps), max(max(steps), min(steps) + 1))  # the newest step is the right edge
        if key == "lr":  # every tick says its whole value: an offset label ("1e-4") at the corner is easy to miss
            from matplotlib.ticker import FuncFormatter

            axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.2e}"))
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.legend(loc="upper right", fontsize=FONT_SIZE - 2)
        figure.tight_layout()
        path = logging_dir / f"{key}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        written.append(path)
    return written


def existing_charts(logging_dir: Path) -> list[Path]:
    return [logging_dir / name for name in CHART_FILES if (logging_dir / name).is_file()]
