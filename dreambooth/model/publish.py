"""Generate Ckpt: a model's weights → one single-file checkpoint where the WebUI looks for them.

`<Stable-diffusion>[/<name>]/<name>_<revision>[_ema][_half].safetensors` (or `.ckpt`): an fp16 export gets
its own name, so it never silently replaces the full-precision one (or the other way round).
"""
from __future__ import annotations

from pathlib import Path

from ..platform import host
from ..config import TrainConfig
from ..errors import DreamboothError
from ..store import ModelDir


def checkpoint_path(model: ModelDir, cfg: TrainConfig, revision: int, subdir: bool | None = None,
                    suffix: str = "") -> Path:
    folder = host.checkpoint_dir()
    if cfg.use_subdir if subdir is None else subdir:
        folder = folder / model.name
    extension = ".safetensors" if cfg.save_safetensors else ".ckpt"
    return folder / f"{model.name}_{revision}{suffix}{extension}"


def export_checkpoint(model: ModelDir, cfg: TrainConfig, revision: int, modules: dict | None = None,
                      half: bool | None = None, subdir: bool | None = None, suffix: str = "") -> Path:
    """Write the checkpoint from in-memory modules (during training) or from working/ (Generate Ckpt)."""
    from ..convert.export import export_single_file

    half = cfg.half_model if half is None else half
    out = checkpoint_path(model, cfg, revision, subdir, suffix + ("_half" if half else ""))
    export_single_file(modules if modules is not None else model.working, out, working=model.working,
                       half=half,
                       metadata={"dreambooth_model": model.name, "dreambooth_revision": str(revision)})
    host.refresh_checkpoints()
    return out


def publish_working(model: ModelDir, cfg: TrainConfig, half: bool | None = None, subdir: bool | None = None) -> Path:
    """Generate Ckpt from the model's working folder (its latest trained weights)."""
    model.require()
    if cfg.revision == 0:
        raise DreamboothError(f"model '{model.name}' has not been trained yet: train it before Generate Ckpt",
                              field="model_name")
    return export_checkpoint(model, cfg, cfg.revision, None, half, subdir)
