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
    name = output_name(model, cfg)
    if cfg.use_subdir if subdir is None else subdir:
        folder = folder / name
    extension = ".safetensors" if cfg.save_safetensors else ".ckpt"
    return folder / f"{name}_{revision}{suffix}{extension}"


def output_name(model: ModelDir, cfg: TrainConfig) -> str:
    """The checkpoints' base name: custom_model_name (checked when set) or the model's folder name."""
    return cfg.custom_model_name.strip() or model.name


def export_checkpoint(model: ModelDir, cfg: TrainConfig, revision: int, modules: dict | None = None,
                      half: bool | None = None, subdir: bool | None = None, suffix: str = "") -> Path:
    """Write the checkpoint from in-memory modules (during training) or from working/ (Generate Ckpt)."""
    from ..convert.export import export_single_file

    half = cfg.half_model if half is None else half
    out = checkpoint_path(model, cfg, revision, subdir, suffix + ("_half" if half else ""))
    modules = dict(modules or {})
    if cfg.pretrained_vae_name_or_path.strip() and modules.get("vae") is None:  # exported with the alternate VAE
        modules["vae"] = alternate_vae(model, cfg)
    export_single_file(modules or model.working, out, working=model.working,
                       half=half,
                       metadata={"dreambooth_model": model.name, "dreambooth_revision": str(revision)})
    host.refresh_checkpoints()
    return out


def alternate_vae(model: ModelDir, cfg: TrainConfig):
    """The VAE named by pretrained_vae_name_or_path, shaped like the model's own (working/vae)."""
    import json

    from ..convert.vae_file import load_vae

    base = json.loads((model.working / "vae" / "config.json").read_text(encoding="utf-8"))
    return load_vae(cfg.pretrained_vae_name_or_path, base)


def publish_working(model: ModelDir, cfg: TrainConfig, half: bool | None = None, subdir: bool | None = None) -> Path:
    """Generate Ckpt from the model's working folder (its latest trained weights)."""
    model.require()
    if cfg.revision == 0:
        raise DreamboothError(f"model '{model.name}' has not been trained yet: train it before Generate Ckpt",
                              field="model_name")
    return export_checkpoint(model, cfg, cfg.revision, None, half, subdir)
