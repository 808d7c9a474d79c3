"""Create a model's working diffusers folder from a single-file SD1.x checkpoint or a diffusers folder.

All or nothing: the folder is assembled under a temporary name and renamed into place at the very end,
so any error leaves no `working_dir` behind.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import DreamboothError


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _with_weights(cls, config: dict, state_dict: dict, what: str):
    """A diffusers model holding `state_dict` exactly, built on the meta device to skip random init."""
    import torch

    with torch.device("meta"):
        model = cls.from_config(config)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise DreamboothError(f"the checkpoint's {what} weights do not fit the inferred model: {exc}",
                              field="source") from exc
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        model = cls.from_config(config)  # some buffer was not in the file: build for real
        model.load_state_dict(state_dict, strict=True)
    return model.float()


def components_from_single_file(path: Path, progress: Callable[[str], None] = print):
    """(unet, vae, text_encoder, model_type) from a .safetensors/.ckpt SD1.x checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .checkpoint_io import load_state_dict
    from .detect import detect_model_type
    from .diffusers_io import build_text_encoder, load_text_encoder_weights
    from .ldm_infer import infer_configs
    from .ldm_map import ldm_to_diffusers

    progress(f"reading {path.name}")
    state_dict, metadata = load_state_dict(path)
    model_type = detect_model_type(state_dict.keys(), path.name)
    configs = infer_configs(state_dict, metadata)
    unet_sd, vae_sd, te_sd = ldm_to_diffusers(state_dict, configs)
    del state_dict
    progress("converting UNet, VAE and text encoder")
    unet = _with_weights(UNet2DConditionModel, configs["unet"], {k: v.float() for k, v in unet_sd.items()}, "UNet")
    vae = _with_weights(AutoencoderKL, configs["vae"], {k: v.float() for k, v in vae_sd.items()}, "VAE")
    text_encoder = build_text_encoder(configs["text_encoder"])
    load_text_encoder_weights(text_encoder, {k: v.float() if v.is_floating_point() else v for k, v in te_sd.items()})
    return unet, vae, text_encoder.float(), model_type


def _folder_model_type(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    if "text_encoder_2" in index:
        raise DreamboothError(f"'{folder.name}' is an SDXL model: SDXL models are not supported yet", field="source")
    unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    if unet.get("use_linear_projection") or scheduler.get("prediction_type") == "v_prediction":
        raise DreamboothError(f"'{folder.name}' is an SD2.x model: SD2.x checkpoints are not supported yet",
                              field="source")
    return "v1x"


def create_working(source, working_dir, progress: Callable[[str], None] = print) -> dict:
    """Extract `source` (SD1.x .safetensors/.ckpt, or a diffusers folder) into `working_dir` (fp32 diffusers).

    Returns {"model_type", "source", "parameters": {"unet", "vae", "text_encoder"}}.
    """
    from .diffusers_io import SCHEDULER_CONFIG, check_folder, load_components, save_pipeline_folder

    source, working_dir = Path(source), Path(working_dir)
    if working_dir.exists():
        raise DreamboothError(f"'{working_dir}' already exists: pick a new model name or remove it first",
                              field="model_name")
    if source.is_dir():
        check_folder(source)
        model_type = _folder_model_type(source)
        progress(f"loading diffusers folder {source.name}")
        unet, vae, text_encoder, tokenizer, scheduler_config = load_components(source)
        unet, vae, text_encoder = unet.float(), vae.float(), text_encoder.float()
        tokenizer_source = source / "tokenizer"
    else:
        unet, vae, text_encoder, model_type = components_from_single_file(source, progress)
        tokenizer_source, scheduler_config = None, dict(SCHEDULER_CONFIG)
    progress(f"writing {working_dir}")
    save_pipeline_folder(working_dir, unet, vae, text_encoder, tokenizer_source, scheduler_config)
    return {"model_type": model_type, "source": str(source),
            "parameters": {"unet": _count(unet), "vae": _count(vae), "text_encoder": _count(text_encoder)}}
