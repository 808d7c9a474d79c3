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
    """Generate Ckpt from the model's working folder (its latest trained weights), with the chosen LoRA
    merged in when there is one (see chosen_lora)."""
    model.require()
    lora = chosen_lora(model, cfg)
    if lora is not None:
        return publish_merged(model, cfg, lora, half, subdir)
    if cfg.revision == 0:
        raise DreamboothError(f"model '{model.name}' has not been trained yet: train it before Generate Ckpt",
                              field="model_name")
    return export_checkpoint(model, cfg, cfg.revision, None, half, subdir)


def chosen_lora(model: ModelDir, cfg: TrainConfig) -> Path | None:
    """The LoRA Generate Ckpt merges: lora_model_name when set; with use_lora and none chosen, this model's
    newest LoRA file; else None (a plain export)."""
    from .lora_files import newest_model_lora, resolve_lora_file

    if cfg.lora_model_name.strip():
        return resolve_lora_file(cfg.lora_model_name, model)
    if not cfg.use_lora:
        return None
    newest = newest_model_lora(model, cfg)
    if newest is None:
        raise DreamboothError(f"model '{model.name}' has no LoRA file yet: train it with use_lora, or choose a "
                              "Lora Model to merge", field="lora_model_name")
    return newest


def publish_merged(model: ModelDir, cfg: TrainConfig, lora: Path, half: bool | None = None,
                   subdir: bool | None = None) -> Path:
    """`NAME_<revision>_lora[_half]`: the base (working/) + lora_weight × the LoRA's change, every layer of
    the LoRA accounted for."""
    from ..convert.diffusers_io import load_components

    unet, _vae, text_encoder, _tokenizer, _scheduler = load_components(model.working)
    merge_lora(model, lora, cfg.lora_weight, unet, text_encoder)
    out = export_checkpoint(model, cfg, cfg.revision, {"unet": unet, "text_encoder": text_encoder}, half, subdir,
                            suffix="_lora")
    return out


def merge_lora(model: ModelDir, lora: Path, weight: float, unet, text_encoder) -> None:
    """Adds weight × the LoRA's change to the UNet and text encoder in place (Generate Ckpt, Generate
    Samples); refuses a LoRA any of whose layers matches no layer of this model."""
    from functools import partial

    from ..convert.diffusers_io import text_encoder_state_dict
    from ..convert.lora_kohya import kohya_name, merge_into, read_lora_file, split_layers
    from ..convert.lora_layout import layout_for

    layout = layout_for(unet)  # SDXL names its layers by the LDM paths, and by lora_te1/lora_te2
    layers = layout.current(split_layers(read_lora_file(lora)[0]), [name for name, _ in unet.named_modules()])
    merged = merge_into(unet.state_dict(), layout.unet_name, layers, weight)
    for prefix, encoder in layout.text_encoders(text_encoder).items():
        merged |= merge_into(text_encoder_state_dict(encoder), partial(kohya_name, prefix), layers, weight)
    unmatched = sorted(set(layers) - merged)
    if unmatched:
        raise DreamboothError(f"LoRA {lora.name} does not fit model '{model.name}': {len(unmatched)} of its layers "
                              f"match no layer here (e.g. {unmatched[0]}); choose a LoRA trained on this base",
                              field="lora_model_name")
