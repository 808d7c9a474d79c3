"""SD2.x model types: 512 epsilon ("v2x-512") or 768 v-prediction ("v2x"), and how create tells them apart.

The prediction type is not visible in tensor shapes. In order of trust:
1. the user's choice (create's `model_type`);
2. metadata: our own exports (`dreambooth_configs` -> "scheduler" -> prediction_type), ModelSpec
   (`modelspec.prediction_type` "v"/"epsilon") and kohya-ss (`ss_v_parameterization`);
3. a diffusers folder's scheduler config;
4. a forward-pass test like the WebUI's `sd_models_config.is_using_v_parameterization_for_sd2`: run the
   UNet once on a constant 0.5 latent at t=999 with a constant 0.5 context, and call it v-prediction when
   mean(output - input) < -1. Why it works: at t=999 the latent is almost pure noise (alpha_bar ~ 0.005),
   so an epsilon model predicts roughly its input (mean difference ~ 0) while a v model predicts
   v ~ -x0, far from the +0.5 input. Only meaningful for trained weights (random tiny models carry
   metadata instead).
"""
from __future__ import annotations

import json

MODEL_TYPES = ("v1x", "v2x-512", "v2x", "SDXL")
NATIVE_RESOLUTION = {"v1x": 512, "v2x-512": 512, "v2x": 768, "SDXL": 1024}
V_THRESHOLD = -1.0


def model_type_for(family: str, prediction_type: str) -> str:
    if family in ("v1x", "SDXL"):
        return family
    return "v2x" if prediction_type == "v_prediction" else "v2x-512"


def prediction_type_of(model_type: str) -> str:
    return "v_prediction" if model_type == "v2x" else "epsilon"


def prediction_type_from_metadata(metadata: dict | None) -> str | None:
    """"v_prediction" / "epsilon" when the file says so, else None."""
    metadata = metadata or {}
    try:
        stored = json.loads(metadata.get("dreambooth_configs") or "{}")
    except ValueError:
        stored = {}
    value = (stored.get("scheduler") or {}).get("prediction_type") if isinstance(stored, dict) else None
    if value in ("v_prediction", "epsilon"):
        return value
    spec = str(metadata.get("modelspec.prediction_type", "")).lower()
    if spec in ("v", "v_prediction", "epsilon"):
        return "epsilon" if spec == "epsilon" else "v_prediction"
    kohya = str(metadata.get("ss_v_parameterization", "")).lower()
    if kohya in ("true", "false"):
        return "v_prediction" if kohya == "true" else "epsilon"
    return None


def v_prediction_score(unet) -> float:
    """mean(unet(0.5, t=999, context=0.5) - 0.5) on the CPU in fp32 (the WebUI's test, any UNet size)."""
    import torch

    levels = len(unet.config.block_out_channels)
    size = max(8, 2 ** (levels - 1))
    parameter = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, size, size), 0.5, dtype=parameter.dtype, device=parameter.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=parameter.dtype,
                         device=parameter.device)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=parameter.device), encoder_hidden_states=context).sample
    return float((out.float() - x.float()).mean())


def looks_like_v_prediction(unet) -> bool:
    return v_prediction_score(unet) < V_THRESHOLD
