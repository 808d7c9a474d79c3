"""What a run shows while it trains: metric rows flushed into the live status and the progress bar (loss,
learning rate, memory, it/s, ETA), and the charts, redrawn every few seconds."""
from __future__ import annotations

from typing import Callable

from ..monitor import charts
from .pace import TrainingPace


def memory_kind(device) -> str:
    """What `memory_mb` measures on this device (the label of its column and chart)."""
    return "VRAM" if device.type == "cuda" else "RAM (RSS)"


def progress_bar(total: int, initial: int, name: str, main_process: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"Training {name}", unit="step", disable=not main_process,
                dynamic_ncols=True)


class LiveReport:
    """The status a run reports from its metrics; `pace.excluded()` keeps previews and saves out of it/s."""

    def __init__(self, model, metrics, control, result, total_steps: int, start_step: int, main_process: bool,
                 clock: Callable[[], float], chart_every_s: float):
        self.model, self.metrics, self.control, self.result = model, metrics, control, result
        self.total_steps, self.main_process, self.chart_every_s = total_steps, main_process, chart_every_s
        self.clock = clock
        self.pace = TrainingPace(start_step, clock)
        self._charts_drawn_at, self._charts_step = clock(), None

    def flush(self, step: int, progress=None) -> None:
        """Write the rows logged so far (main process; the others drop theirs) and show the newest."""
        rows = self.metrics.flush() if self.main_process else self.metrics.discard()
        if not rows:
            return
        rate = self.pace.steps_per_second(step)
        remaining = self.total_steps - step
        last = rows[-1]
        self.result.last_loss = last["loss"]
        self.control.update(loss=last["loss"], lr=last["lr"], memory_mb=last["memory_mb"],
                            memory_kind=last.get("memory_kind", ""), it_per_s=rate,
                            eta_s=remaining / rate if rate > 0 else None)
        if progress is not None:
            progress.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", refresh=False)
        if self.clock() - self._charts_drawn_at >= self.chart_every_s:  # the charts follow the training
            with self.pace.excluded():  # a redraw takes ~0.3 s
                self.draw_charts(step)

    def draw_charts(self, step: int) -> None:
        """Redraw the charts, unless they already show `step`."""
        if not self.main_process or self._charts_step == step:
            return
        drawn = charts.draw_charts(self.model.logging, self.model.name)
        self._charts_drawn_at, self._charts_step = self.clock(), step
        self.result.charts = drawn
        self.control.update(charts=[str(p) for p in drawn])
