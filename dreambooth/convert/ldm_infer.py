"""Diffusers configs for an SD1/SD2-topology LDM state dict, read from tensor shapes.

What shapes cannot tell (attention heads, scaling factor, activation, sample sizes) comes from the
"dreambooth_configs" JSON our own exports store in the safetensors metadata, else from SD1.x defaults.
"""
from __future__ import annotations

import json
import re

from ..errors import DreamboothError
from .detect import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

CONFIGS_METADATA_KEY = "dreambooth_configs"


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _shape(sd: dict, key: str):
    if key not in sd:
        raise DreamboothError(f"the checkpoint is missing '{key}': it is not a complete SD1.x model", field="source")
    return tuple(sd[key].shape)


def _infer_unet(sd: dict, stored: dict) -> dict:
    p = UNET_PREFIX
    keys = [k[len(p):] for k in sd if k.startswith(p)]
    model_channels, in_channels = _shape(sd, p + "input_blocks.0.0.weight")[:2]
    ops = _indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight")
    lpb = ops[0] - 1 if ops else max(_indices(keys, r"input_blocks\.(\d+)\."))
    levels = len(ops) + 1
    channels, down, up = [], [], []
    for i in range(levels):
        first = 1 + i * (lpb + 1)
        channels.append(_shape(sd, f"{p}input_blocks.{first}.0.out_layers.3.weight")[0])
        attn = f"input_blocks.{first}.1.proj_in.weight" in keys
        down.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        attn_up = f"output_blocks.{i * (lpb + 1)}.1.proj_in.weight" in keys
        up.append("CrossAttnUpBlock2D" if attn_up else "UpBlock2D")
    mid = "middle_block.1."
    proj_in = _shape(sd, f"{p}{mid}proj_in.weight")
    linear = len(proj_in) == 2  # SD2.x: linear proj_in/proj_out, 64-dim heads (diffusers' "attention_head_dim"
    #                              is really the head count per block: 5, 10, 20, 20 for SD2)
    heads = [max(1, c // 64) for c in channels] if linear else 8
    cfg = {"sample_size": 64, "attention_head_dim": heads, "norm_num_groups": 32, **stored}
    cfg.update({
        "in_channels": in_channels,
        "out_channels": _shape(sd, p + "out.2.weight")[0],
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": channels,
        "layers_per_block": lpb,
        "cross_attention_dim": _shape(sd, f"{p}{mid}transformer_blocks.0.attn2.to_k.weight")[1],
        "use_linear_projection": linear,
    })
    depth = len(_indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if depth != 1:
        cfg["transformer_layers_per_block"] = depth
    if channels[0] != model_channels:
        raise DreamboothError("the UNet's first level does not match its input convolution: unsupported layout",
                              field="source")
    return cfg


def _infer_vae(sd: dict, stored: dict) -> dict:
    p = VAE_PREFIX
    keys = [k[len(p):] for k in sd if k.startswith(p)]
    levels = len(_indices(keys, r"encoder\.down\.(\d+)\."))
    lpb = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    if levels == 0 or lpb == 0:
        raise DreamboothError("the checkpoint's VAE has no encoder blocks: not a complete SD1.x model", field="source")
    cfg = {"sample_size": 512, "scaling_factor": 0.18215, "act_fn": "silu", "norm_num_groups": 32, **stored}
    cfg.update({
        "in_channels": _shape(sd, p + "encoder.conv_in.weight")[1],
        "out_channels": _shape(sd, p + "decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [_shape(sd, f"{p}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)],
        "layers_per_block": lpb,
        "latent_channels": _shape(sd, p + "post_quant_conv.weight")[0],
    })
    return cfg


def _infer_clip(sd: dict, stored: dict, prefix: str = CLIP_PREFIX) -> dict:
    """CLIPTextModel config of the OpenAI CLIP text encoder under `prefix` (SD1's; SDXL's first one), or
    of SD2's OpenCLIP one."""
    from .openclip_map import OPENCLIP_PREFIX, infer_openclip_config, strip

    if any(k.startswith(OPENCLIP_PREFIX) for k in sd):
        return infer_openclip_config(strip(sd), stored)
    p = prefix
    keys = [k[len(p):].removeprefix("text_model.") for k in sd if k.startswith(p)]
    sd = {k[len(p):].removeprefix("text_model."): v for k, v in sd.items() if k.startswith(p)}
    vocab, hidden = _shape(sd, "embeddings.token_embedding.weight")
    defaults = {"num_attention_heads": 12 if hidden == 768 else max(1, hidden // 64), "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
                "projection_dim": 768}
    cfg = {**defaults, **stored}
    cfg.update({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _shape(sd, "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": len(_indices(keys, r"encoder\.layers\.(\d+)\.")),
        "max_position_embeddings": _shape(sd, "embeddings.position_embedding.weight")[0],
    })
    return cfg


def stored_configs(metadata: dict | None) -> dict:
    text = (metadata or {}).get(CONFIGS_METADATA_KEY)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def infer_configs(state_dict: dict, metadata: dict | None = None) -> dict:
    """{"unet": ..., "vae": ..., "text_encoder": ...} diffusers/transformers config dicts."""
    stored = stored_configs(metadata)
    return {"unet": _infer_unet(state_dict, stored.get("unet", {})),
            "vae": _infer_vae(state_dict, stored.get("vae", {})),
            "text_encoder": _infer_clip(state_dict, stored.get("text_encoder", {}))}
