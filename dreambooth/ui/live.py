"""The live panel: the status line, the selected model's samples and charts, the log (plain data, no
gradio, so it is unit-tested; tab.py polls it)."""
from __future__ import annotations

import os

from ..errors import DreamboothError
from ..platform import host
from ..service.jobs import runner
from ..store import model_dir


def model_gallery(model: str | None) -> list[tuple[str, str]]:
    """Every preview of the model, newest first, captioned with its step and prompt."""
    from ..model.sampling import list_samples

    if not (model or "").strip():
        return []
    try:
        folder = model_dir(model).samples
    except DreamboothError:
        return []
    return [(str(path), caption) for path, caption in list_samples(folder)]


def model_charts(model: str | None) -> list[str | None]:
    """The model's loss, LR and memory charts (None where not drawn yet)."""
    from ..monitor.charts import CHART_FILES

    if not (model or "").strip():
        return [None] * len(CHART_FILES)
    try:
        folder = model_dir(model).logging
    except DreamboothError:
        return [None] * len(CHART_FILES)
    return [str(folder / name) if (folder / name).is_file() else None for name in CHART_FILES]


def memory_label(kind: str) -> str:
    """VRAM is the trainer's own; on a CPU the figure is the whole process's RAM (the WebUI's too, hosted)."""
    if kind.startswith("RAM"):
        return "RAM of the whole WebUI process" if host.is_hosted() else "process RAM"
    return kind or "memory"


NON_BREAKING_HYPHEN = "\u2011"
NON_BREAKING_SPACE = "\u00a0"
LONG_PHASES = ("waiting", "preparing", "generating class images", "sampling", "saving", "paused", "running")


def _unbroken(text: str) -> str:
    """A number and its unit stay on one line ("0.42 it/s", "545 MB")."""
    return text.replace(" ", NON_BREAKING_SPACE)


def status_text(status, kind: str | None = "train") -> str:
    """One readable block: state, epoch/step, loss, lr, it/s, ETA, memory; the progress of a long phase."""
    if status.state == "idle" and not status.model_name:
        return "idle"
    detail = f" · {status.detail}" if status.detail and status.state in LONG_PHASES else ""
    if kind and kind != "train":
        return f"{kind} {status.state}: {status.model_name}{detail}"
    parts = [f"{status.state}: {status.model_name}{detail}"]
    if status.total_epochs or status.epoch:
        parts.append(f"epoch {status.epoch}/{status.total_epochs}")
    if status.total_steps or status.step:
        parts.append(f"step {status.step}/{status.total_steps}")
    if status.loss is not None:
        parts.append(f"loss {status.loss:.4f}")
    if status.lr is not None:
        parts.append(f"lr {status.lr:.2e}".replace("-", NON_BREAKING_HYPHEN))  # never "1.00e-" / "04"
    if status.it_per_s is not None:
        parts.append(_unbroken(f"{status.it_per_s:.2f} it/s"))
    if status.eta_s is not None and status.state == "training":
        parts.append(f"ETA {int(status.eta_s) // 60}:{int(status.eta_s) % 60:02d}")
    if status.memory_mb is not None:
        parts.append(f"{memory_label(status.memory_kind)} {_unbroken(f'{status.memory_mb:.0f} MB')}")
    text = " · ".join(parts)
    if status.message and status.state in ("failed", "waiting"):
        text += f"\n{status.message}"
    return text


def poll() -> dict:
    """Everything the live panel shows, as plain data."""
    status = runner().status()
    return {"status": status_text(status, runner().last_kind()), "samples": [p for p in status.samples if os.path.exists(p)],
            "charts": [p for p in status.charts if os.path.exists(p)],
            "log": "\n".join(reversed(runner().log_lines()[-200:])), "busy": runner().busy(),
            "model": status.model_name}
