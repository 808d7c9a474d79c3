"""Two-way key mapping between diffusers component state dicts and the single-file LDM layout.

Works for any SD1-topology model: any number of levels, any layers_per_block, attention wherever the
config says. The mapping is built as a table of module-prefix pairs from the configs, and keys are renamed
by their longest matching prefix, so both directions use the very same table (exact round trip).

`diffusers_to_ldm(unet, vae, text_encoder, configs=None)` takes modules (configs read from them) or state
dicts plus `configs` = {"unet": {...}, "vae": {...}} (diffusers config dicts).
"""
from __future__ import annotations

from ..errors import DreamboothError
from .detect import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_VAE_RESNET = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("conv_shortcut", "nin_shortcut")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _resnet(pairs, diff, ldm, sub):
    pairs += [(f"{diff}.{a}", f"{ldm}.{b}") for a, b in sub]


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type


def unet_pairs(cfg: dict) -> list[tuple[str, str]]:
    """(diffusers module prefix, LDM module prefix) for a UNet2DConditionModel config."""
    levels = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    pairs = [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
             ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")]
    for i, kind in enumerate(cfg["down_block_types"]):
        for j in range(lpb):
            index = 1 + i * (lpb + 1) + j
            _resnet(pairs, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0", _UNET_RESNET)
            if _has_attention(kind):
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{index}.1"))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op"))
    if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled text + size/crop embedding
        pairs += [("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2")]
    _resnet(pairs, "mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    pairs.append(("mid_block.attentions.0", "middle_block.1"))
    _resnet(pairs, "mid_block.resnets.1", "middle_block.2", _UNET_RESNET)
    for i, kind in enumerate(cfg["up_block_types"]):
        attention = _has_attention(kind)
        for j in range(lpb + 1):
            index = i * (lpb + 1) + j
            _resnet(pairs, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0", _UNET_RESNET)
            if attention:
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{index}.1"))
        if i < levels - 1:
            last = i * (lpb + 1) + lpb
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{last}.{2 if attention else 1}.conv"))
    return pairs


def vae_pairs(cfg: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) for an AutoencoderKL config. LDM numbers decoder levels bottom-up."""
    levels = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    pairs = [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_in", f"{part}.conv_in"), (f"{part}.conv_out", f"{part}.conv_out"),
                  (f"{part}.conv_norm_out", f"{part}.norm_out")]
        _resnet(pairs, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _VAE_RESNET)
        _resnet(pairs, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _VAE_RESNET)
        pairs += [(f"{part}.mid_block.attentions.0.{a}", f"{part}.mid.attn_1.{b}") for a, b in _VAE_ATTN]
    for i in range(levels):
        for j in range(lpb):
            _resnet(pairs, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        if i < levels - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"))
        ldm_level = levels - 1 - i
        for j in range(lpb + 1):
            _resnet(pairs, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{ldm_level}.block.{j}", _VAE_RESNET)
        if i < levels - 1:
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{ldm_level}.upsample.conv"))
    return pairs


def renamed(name: str, table: dict[str, str]) -> str | None:
    """`name` (a key or a module path) with its longest prefix found in `table` replaced; None when none is."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        target = table.get(".".join(parts[:n]))
        if target is not None:
            return ".".join([target, *parts[n:]])
    return None


def _rename(state_dict: dict, table: dict[str, str], what: str) -> dict:
    out = {}
    unknown = []
    for key, tensor in state_dict.items():
        new = renamed(key, table)
        if new is None:
            unknown.append(key)
        else:
            out[new] = tensor
    if unknown:
        raise DreamboothError(f"the {what} weights do not match the expected SD1.x/SD2.x layout "
                              f"(unexpected keys such as {unknown[:3]}): the checkpoint is not a supported model")
    return out


def _is_vae_attn_linear(key: str) -> bool:
    # The VAE mid-block attention is 1x1 convs in LDM and linears in diffusers.
    return ".mid.attn_1." in key and key.endswith("weight") and key.split(".")[-2] in ("q", "k", "v", "proj_out")


def unet_to_ldm(sd: dict, cfg: dict) -> dict:
    return _rename(sd, dict(unet_pairs(cfg)), "UNet")


def vae_to_ldm(sd: dict, cfg: dict) -> dict:
    out = _rename(sd, dict(vae_pairs(cfg)), "VAE")
    for key, tensor in out.items():
        if _is_vae_attn_linear(key) and tensor.ndim == 2:
            out[key] = tensor.reshape(*tensor.shape, 1, 1)
    return out


def te_with_prefix(sd: dict) -> dict:
    """CLIP text-encoder keys always as `text_model.*` (transformers 5 drops the wrapper; 4.x needs it)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sd.items()}


def _state_and_config(obj, configs, name):
    if hasattr(obj, "state_dict"):
        config = configs.get(name) if configs else None
        return obj.state_dict(), dict(config if config is not None else getattr(obj, "config", {}))
    if configs is None or name not in configs:
        raise ValueError(f"diffusers_to_ldm: a {name} state dict needs configs['{name}']")
    return obj, configs[name]


def _text_encoder_config(text_encoder, configs) -> dict:
    if configs and configs.get("text_encoder") is not None:
        return dict(configs["text_encoder"])
    config = getattr(text_encoder, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}


def diffusers_to_ldm(unet, vae, text_encoder, configs: dict | None = None, te_extras: dict | None = None) -> dict:
    """One LDM-layout state dict (`model.diffusion_model.*`, `first_stage_model.*`, and
    `cond_stage_model.transformer.text_model.*` for SD1 or `cond_stage_model.model.*` for an SD2 (OpenCLIP,
    GELU) text encoder) from the three diffusers components. `te_extras`: OpenCLIP keys to carry (see
    openclip_map)."""
    from .openclip_map import OPENCLIP_PREFIX, clip_to_openclip, is_openclip_config

    unet_sd, unet_cfg = _state_and_config(unet, configs, "unet")
    vae_sd, vae_cfg = _state_and_config(vae, configs, "vae")
    te_sd = text_encoder.state_dict() if hasattr(text_encoder, "state_dict") else text_encoder
    te_cfg = _text_encoder_config(text_encoder, configs)
    out = {}
    out.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(unet_sd, unet_cfg).items()})
    out.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae_sd, vae_cfg).items()})
    if is_openclip_config(te_cfg):
        out.update({OPENCLIP_PREFIX + k: v for k, v in clip_to_openclip(te_sd, te_cfg, te_extras).items()})
    else:
        out.update({CLIP_PREFIX + k: v for k, v in te_with_prefix(te_sd).items()})
    return out


def strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def unet_vae_to_diffusers(state_dict: dict, configs: dict) -> tuple[dict, dict]:
    """(unet_sd, vae_sd) from an LDM-layout state dict (any SD family)."""
    unet = _rename(strip_prefix(state_dict, UNET_PREFIX), {b: a for a, b in unet_pairs(configs["unet"])}, "UNet")
    vae_ldm = strip_prefix(state_dict, VAE_PREFIX)
    vae = _rename(vae_ldm, {b: a for a, b in vae_pairs(configs["vae"])}, "VAE")
    for key in [k for k in vae_ldm if _is_vae_attn_linear(k) and vae_ldm[k].ndim == 4]:
        new = _rename({key: None}, {b: a for a, b in vae_pairs(configs["vae"])}, "VAE")
        name = next(iter(new))
        vae[name] = vae[name].reshape(vae[name].shape[0], vae[name].shape[1])
    return unet, vae


def ldm_to_diffusers(state_dict: dict, configs: dict) -> tuple[dict, dict, dict]:
    """(unet_sd, vae_sd, te_sd) from an LDM-layout state dict (SD1 CLIP or SD2 OpenCLIP text encoder);
    te keys carry `text_model.`. SD2's unused last text block: openclip_map.openclip_to_clip's extras.

    Keys outside the three models (EMA copies, schedule buffers) are ignored.
    """
    unet, vae = unet_vae_to_diffusers(state_dict, configs)
    from .openclip_map import OPENCLIP_PREFIX, openclip_to_clip

    if any(k.startswith(OPENCLIP_PREFIX) for k in state_dict):
        layers = configs["text_encoder"]["num_hidden_layers"]
        te = openclip_to_clip(strip_prefix(state_dict, OPENCLIP_PREFIX), layers)[0]
    else:
        te = te_with_prefix(strip_prefix(state_dict, CLIP_PREFIX))
    return unet, vae, te
