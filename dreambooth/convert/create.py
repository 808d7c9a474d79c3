"""Create a model's working diffusers folder from a single-file SD1.x/SD2.x/SDXL checkpoint or a diffusers folder.

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
    """(unet, vae, text_encoder, family, metadata, extras) from a .safetensors/.ckpt SD1.x/SD2.x checkpoint.

    family: "v1x" or "v2x-512" (shapes only); extras: SD2's unused OpenCLIP tensors (see openclip_map).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .checkpoint_io import load_state_dict
    from .detect import detect_model_type
    from .diffusers_io import build_text_encoder, load_text_encoder_weights
    from .ldm_infer import infer_configs
    from .ldm_map import ldm_to_diffusers
    from .openclip_map import openclip_to_clip, strip

    progress(f"reading {path.name}")
    state_dict, metadata = load_state_dict(path)
    family = detect_model_type(state_dict.keys(), path.name)
    if family == "SDXL":
        unet, vae, text_encoders, extras = _sdxl_components(state_dict, metadata, path.name, progress)
        return unet, vae, text_encoders, family, metadata, extras
    ema = [k for k in state_dict if k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates")]
    if ema:  # said, not silently dropped: users ask which weights they are training
        progress(f"{path.name} also holds EMA weights ({len(ema)} model_ema.* tensors): the regular UNet weights "
                 "are used, as for training from any checkpoint; the EMA copy is not imported")
    configs = infer_configs(state_dict, metadata)
    unet_sd, vae_sd, te_sd = ldm_to_diffusers(state_dict, configs)
    extras = {}
    if family != "v1x":
        layers = configs["text_encoder"]["num_hidden_layers"]
        extras = {k: v.float() for k, v in openclip_to_clip(strip(state_dict), layers)[1].items()}
    del state_dict
    progress("converting UNet, VAE and text encoder")
    unet = _with_weights(UNet2DConditionModel, configs["unet"], {k: v.float() for k, v in unet_sd.items()}, "UNet")
    vae = _with_weights(AutoencoderKL, configs["vae"], {k: v.float() for k, v in vae_sd.items()}, "VAE")
    text_encoder = build_text_encoder(configs["text_encoder"])
    load_text_encoder_weights(text_encoder, {k: v.float() if v.is_floating_point() else v for k, v in te_sd.items()})
    return unet, vae, text_encoder.float(), family, metadata, extras


def _sdxl_components(state_dict: dict, metadata: dict, name: str, progress: Callable[[str], None]):
    """(unet, vae, DualTextEncoder, extras) from an SDXL base checkpoint's state dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .diffusers_io import build_text_encoder, load_text_encoder_weights
    from .sdxl_io import DualTextEncoder, build_text_encoder_2
    from .sdxl_map import check_sdxl_shapes, infer_sdxl_configs, sdxl_to_diffusers

    check_sdxl_shapes(state_dict, f"'{name}'")
    configs = infer_sdxl_configs(state_dict, metadata)
    states, extras = sdxl_to_diffusers(state_dict, configs)
    del state_dict
    progress("converting the SDXL UNet, VAE and both text encoders")
    floats = lambda sd: {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # noqa: E731
    unet = _with_weights(UNet2DConditionModel, configs["unet"], floats(states["unet"]), "UNet")
    vae = _with_weights(AutoencoderKL, configs["vae"], floats(states["vae"]), "VAE")
    text_encoder = build_text_encoder(configs["text_encoder"])
    load_text_encoder_weights(text_encoder, floats(states["text_encoder"]))
    text_encoder_2 = build_text_encoder_2(configs["text_encoder_2"])
    load_text_encoder_weights(text_encoder_2, floats(states["text_encoder_2"]))
    return unet, vae, DualTextEncoder(text_encoder.float(), text_encoder_2.float()), floats(extras)


def _folder_family(folder: Path) -> tuple[str, str]:
    """("v1x" | "v2x-512" | "SDXL", the scheduler's prediction type) of a diffusers folder."""
    from .openclip_map import is_openclip_config

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    text = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    if "text_encoder_2" in index:
        if unet.get("in_channels", 4) != 4 or "text_encoder" not in index or index["text_encoder"][0] is None:
            raise DreamboothError(f"'{folder.name}' is an SDXL refiner or inpainting model: only the SDXL base "
                                  "model can be trained here", field="source")
        return "SDXL", scheduler.get("prediction_type", "epsilon")
    sd2 = unet.get("use_linear_projection") or is_openclip_config(text)
    return ("v2x-512" if sd2 else "v1x"), scheduler.get("prediction_type", "epsilon")


def _check_override(model_type: str | None, family: str) -> None:
    from .v_prediction import MODEL_TYPES

    if model_type is None:
        return
    if model_type not in MODEL_TYPES:
        raise DreamboothError(f"model type '{model_type}' is unknown: use one of {', '.join(MODEL_TYPES)}",
                              field="model_type")
    if (model_type == "v1x") != (family == "v1x") or (model_type == "SDXL") != (family == "SDXL"):
        kind = {"v1x": "an SD1.x", "SDXL": "an SDXL"}.get(family, "an SD2.x")
        raise DreamboothError(f"model type '{model_type}' does not fit the source, which is {kind} model: "
                              f"leave the model type empty to detect it", field="model_type")


def create_working(source, working_dir, progress: Callable[[str], None] = print,
                   model_type: str | None = None) -> dict:
    """Extract `source` (SD1.x/SD2.x/SDXL .safetensors/.ckpt, or a diffusers folder) into `working_dir` (fp32
    diffusers).

    `model_type` ("v1x", "v2x-512", "v2x", "SDXL") overrides the detection (SD2's v-prediction: see
    v_prediction).
    Returns {"model_type", "prediction_type", "resolution" (native size hint), "source",
    "parameters": {"unet", "vae", "text_encoder"}}.
    """
    from .diffusers_io import SCHEDULER_CONFIG, check_folder, load_components, save_pipeline_folder
    from .openclip_map import EXTRAS_FILE
    from .v_prediction import (NATIVE_RESOLUTION, looks_like_v_prediction, model_type_for,
                               prediction_type_from_metadata, prediction_type_of)

    source, working_dir = Path(source), Path(working_dir)
    if working_dir.exists():
        raise DreamboothError(f"'{working_dir}' already exists: pick a new model name or remove it first",
                              field="model_name")
    extras = None
    if source.is_dir():
        check_folder(source)
        family, prediction = _folder_family(source)
        _check_override(model_type, family)
        progress(f"loading diffusers folder {source.name}")
        unet, vae, text_encoder, tokenizer_source, scheduler_config = load_components(source)
        unet, vae, text_encoder = unet.float(), vae.float(), text_encoder.float()
        tokenizer_source = source / "tokenizer"
        if (source / EXTRAS_FILE).is_file():
            from .checkpoint_io import load_state_dict

            extras = load_state_dict(source / EXTRAS_FILE)[0]
    else:
        unet, vae, text_encoder, family, metadata, extras = components_from_single_file(source, progress)
        _check_override(model_type, family)
        tokenizer_source, scheduler_config = None, dict(SCHEDULER_CONFIG)
        prediction = prediction_type_from_metadata(metadata)
        if prediction is None and family not in ("v1x", "SDXL") and model_type is None:
            progress("testing the UNet for v-prediction")
            prediction = "v_prediction" if looks_like_v_prediction(unet) else "epsilon"
    if model_type is None:
        model_type = model_type_for(family, prediction or "epsilon")
    # SDXL is epsilon unless the file says otherwise (a few fine-tunes are v-prediction)
    scheduler_config = dict(scheduler_config, prediction_type=(prediction or "epsilon") if family == "SDXL"
                            else prediction_type_of(model_type))
    progress(f"model type {model_type} ({scheduler_config['prediction_type']}); writing {working_dir}")
    if family == "SDXL":
        from .sdxl_io import save_sdxl_folder

        save_sdxl_folder(working_dir, unet, vae, text_encoder, scheduler_config, extras=extras or None)
    else:
        save_pipeline_folder(working_dir, unet, vae, text_encoder, tokenizer_source, scheduler_config,
                             extras=extras or None,
                             pad_token="!" if family != "v1x" and tokenizer_source is None else None)
    return {"model_type": model_type, "prediction_type": scheduler_config["prediction_type"],
            "resolution": NATIVE_RESOLUTION[model_type], "source": str(source),
            "parameters": {"unet": _count(unet), "vae": _count(vae), "text_encoder": _count(text_encoder)}}
