"""SDXL single-file checkpoints (the layout the WebUI loads) <-> diffusers components.

The file holds `model.diffusion_model.*` (the UNet; its added size/pooled-text embedding is `label_emb.0.*`),
`first_stage_model.*` (the VAE) and two text encoders under `conditioner.embedders.`:
  0.transformer.text_model.*  CLIP ViT-L in the transformers layout (as in SD1.x files)
  1.model.*                   OpenCLIP ViT-bigG: joint q/k/v `in_proj`, and `text_projection` stored as
                              (hidden, projection), the transpose of transformers' Linear weight
SDXL uses every block of both encoders (the penultimate layer's output is taken at run time), so unlike
SD2 nothing of the text towers is left over except OpenCLIP's `logit_scale`, which is kept as an extra.
The refiner (only an OpenCLIP encoder, as `embedders.0.model`) and the inpainting UNet (9 input channels)
are told apart and refused.
"""
from __future__ import annotations

import math

from ..errors import DreamboothError
from .detect import UNET_PREFIX, VAE_PREFIX

CONDITIONER_PREFIX = "conditioner.embedders."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPENCLIP_G_PREFIX = "conditioner.embedders.1.model."
REFINER_PREFIX = "conditioner.embedders.0.model."
LABEL_EMB = UNET_PREFIX + "label_emb.0.0.weight"
PROJECTION = "text_projection.weight"  # transformers' name in CLIPTextModelWithProjection
VAE_DEFAULTS = {"scaling_factor": 0.13025, "sample_size": 1024}  # SDXL's VAE (what shapes cannot tell)
UNET_DEFAULTS = {"sample_size": 128}


def check_sdxl_keys(keys, name: str) -> None:
    """Refuse SDXL variants we cannot train, from key names alone."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has(REFINER_PREFIX) and not has(OPENCLIP_G_PREFIX):
        raise DreamboothError(f"{name} is an SDXL refiner checkpoint (one OpenCLIP text encoder): the refiner only "
                              "polishes the base model's output and is not trained with Dreambooth; pick an SDXL "
                              "base checkpoint", field="source")
    missing = [what for what, prefix in (("the UNet", UNET_PREFIX), ("the VAE", VAE_PREFIX),
                                         ("the CLIP-L text encoder", CLIP_L_PREFIX),
                                         ("the OpenCLIP-bigG text encoder", OPENCLIP_G_PREFIX)) if not has(prefix)]
    if missing:
        raise DreamboothError(f"{name} is an incomplete SDXL checkpoint (it lacks {', '.join(missing)}): "
                              "use a full SDXL base checkpoint", field="source")
    if LABEL_EMB not in keys:
        raise DreamboothError(f"{name} has SDXL text encoders but its UNet has no size/text embedding "
                              "(label_emb): not an SDXL base model", field="source")


def check_sdxl_shapes(state_dict: dict, name: str) -> None:
    channels = state_dict[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1]
    if channels != 4:
        kind = "an SDXL inpainting" if channels == 9 else f"an SDXL ({channels}-channel input)"
        raise DreamboothError(f"{name} is {kind} checkpoint: only the SDXL base model (4 input channels) can be "
                              "trained here; pick an SDXL base checkpoint", field="source")


def _openclip_blocks(openclip: dict) -> int:
    from .openclip_map import block_count

    return block_count(openclip)


def infer_sdxl_configs(state_dict: dict, metadata: dict | None = None) -> dict:
    """{"unet", "vae", "text_encoder", "text_encoder_2"} config dicts from shapes (+ our stored metadata)."""
    from .ldm_infer import _indices, _infer_clip, _infer_unet, _infer_vae, stored_configs
    from .ldm_map import strip_prefix
    from .openclip_map import infer_openclip_config

    stored = stored_configs(metadata)
    openclip = strip_prefix(state_dict, OPENCLIP_G_PREFIX)
    text_encoder_2 = infer_openclip_config(openclip, stored.get("text_encoder_2", {}))
    text_encoder_2["num_hidden_layers"] = _openclip_blocks(openclip)  # SDXL keeps every block
    unet = _infer_unet(state_dict, {**UNET_DEFAULTS, **stored.get("unet", {})})
    keys = [k[len(UNET_PREFIX):] for k in state_dict if k.startswith(UNET_PREFIX)]
    lpb = unet["layers_per_block"]
    depths = []
    for level, kind in enumerate(unet["down_block_types"]):
        first = 1 + level * (lpb + 1)
        found = _indices(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depths.append(len(found) if "CrossAttn" in kind else 1)
    middle = len(_indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if middle != depths[-1]:
        raise DreamboothError(f"the SDXL UNet's middle block has {middle} transformer layers but its last level "
                              f"{depths[-1]}: unsupported layout", field="source")
    pooled = text_encoder_2["projection_dim"]
    added_inputs = int(state_dict[LABEL_EMB].shape[1])
    if (added_inputs - pooled) % 6:
        raise DreamboothError(f"the SDXL UNet's added embedding takes {added_inputs} inputs, which is not the "
                              f"{pooled}-wide pooled text plus 6 size/crop values: unsupported layout", field="source")
    unet.update(transformer_layers_per_block=depths, addition_embed_type="text_time",
                addition_time_embed_dim=(added_inputs - pooled) // 6,
                projection_class_embeddings_input_dim=added_inputs)
    return {"unet": unet,
            "vae": _infer_vae(state_dict, {**VAE_DEFAULTS, **stored.get("vae", {})}),
            "text_encoder": _infer_clip(state_dict, stored.get("text_encoder", {}), prefix=CLIP_L_PREFIX),
            "text_encoder_2": text_encoder_2}


def sdxl_to_diffusers(state_dict: dict, configs: dict) -> tuple[dict, dict]:
    """({"unet", "vae", "text_encoder", "text_encoder_2"} state dicts, extras {"logit_scale"})."""
    from .ldm_map import strip_prefix, te_with_prefix, unet_vae_to_diffusers
    from .openclip_map import openclip_to_clip

    unet, vae = unet_vae_to_diffusers(state_dict, configs)
    text_encoder = te_with_prefix(strip_prefix(state_dict, CLIP_L_PREFIX))
    openclip = strip_prefix(state_dict, OPENCLIP_G_PREFIX)
    text_encoder_2, extras = openclip_to_clip(openclip, configs["text_encoder_2"]["num_hidden_layers"])
    if "text_projection" not in extras:
        raise DreamboothError("the SDXL checkpoint's OpenCLIP encoder has no text_projection: it is incomplete",
                              field="source")
    text_encoder_2[PROJECTION] = extras.pop("text_projection").t().contiguous()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}, extras


def diffusers_to_sdxl(states: dict, configs: dict, extras: dict | None = None) -> dict:
    """The single-file state dict from the four diffusers state dicts; `extras` supplies logit_scale."""
    import torch

    from .ldm_map import te_with_prefix, unet_to_ldm, vae_to_ldm
    from .openclip_map import clip_layers_to_openclip

    out = {UNET_PREFIX + k: v for k, v in unet_to_ldm(states["unet"], configs["unet"]).items()}
    out.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(states["vae"], configs["vae"]).items()})
    clip_l = te_with_prefix(states["text_encoder"])
    positions = "text_model.embeddings.position_ids"  # in every SDXL file; transformers 5 no longer keeps it
    if positions not in clip_l:
        clip_l[positions] = torch.arange(configs["text_encoder"]["max_position_embeddings"]).unsqueeze(0)
    out.update({CLIP_L_PREFIX + k: v for k, v in clip_l.items()})
    second = dict(states["text_encoder_2"])
    projection = second.pop(PROJECTION, None)
    if projection is None:
        raise DreamboothError("the second text encoder has no text_projection: not an SDXL "
                              "CLIPTextModelWithProjection", field="model_name")
    openclip = clip_layers_to_openclip(second)
    openclip["text_projection"] = projection.t().contiguous()
    scale = (extras or {}).get("logit_scale")
    openclip["logit_scale"] = scale if scale is not None else torch.tensor(math.log(1 / 0.07), dtype=projection.dtype)
    out.update({OPENCLIP_G_PREFIX + k: v for k, v in openclip.items()})
    return out

