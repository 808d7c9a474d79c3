"""Tell the model family of a single-file checkpoint from its key names."""
from __future__ import annotations

from typing import Iterable

from ..errors import DreamboothError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."


def detect_model_type(keys: Iterable[str], source: str | None = None) -> str:
    """"v1x" for an SD1.x checkpoint, "v2x-512" for an SD2.x one (key names cannot tell v-prediction: see
    v_prediction, create refines it to "v2x"), "SDXL" for an SDXL base one; DreamboothError for anything we
    cannot (yet) train."""
    keys = list(keys)
    name = f"'{source}'" if source else "the checkpoint"
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("conditioner.embedders."):
        from .sdxl_map import check_sdxl_keys

        check_sdxl_keys(keys, name)  # the refiner and incomplete files are refused
        return "SDXL"
    if has("cond_stage_model.model."):
        if has(UNET_PREFIX) and has(VAE_PREFIX):
            return "v2x-512"
        raise DreamboothError(f"{name} lacks the UNet or VAE: use a full SD2.x checkpoint", field="source")
    if has(UNET_PREFIX) and has(CLIP_PREFIX) and has(VAE_PREFIX):
        return "v1x"
    if has(UNET_PREFIX):
        raise DreamboothError(f"{name} lacks the VAE or text encoder: use a full SD1.x checkpoint", field="source")
    raise DreamboothError(f"{name} is not a Stable Diffusion checkpoint (no model.diffusion_model.* keys): "
                          f"pick an SD1.x, SD2.x or SDXL .safetensors/.ckpt", field="source")
