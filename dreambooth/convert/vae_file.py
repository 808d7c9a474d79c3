"""An alternate VAE (pretrained_vae_name_or_path): a diffusers VAE folder or a single VAE file as the WebUI
keeps them in models/VAE (LDM keys, with or without `first_stage_model.`), loaded without running pickled
code and checked against the model's own VAE shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DreamboothError, shorten
from .checkpoint_io import load_state_dict
from .ldm_map import _is_vae_attn_linear, _rename, vae_pairs

FIELD = "pretrained_vae_name_or_path"
_LDM_PREFIX = "first_stage_model."
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _folder_weights(folder: Path) -> tuple[dict, dict]:
    if (folder / "vae" / "config.json").is_file():  # a whole diffusers model: its vae/
        folder = folder / "vae"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise DreamboothError(f"{FIELD}: '{folder}' has no config.json: choose a diffusers VAE folder or a "
                              ".safetensors VAE file", field=FIELD)
    config = {k: v for k, v in json.loads(config_file.read_text(encoding="utf-8")).items() if not k.startswith("_")}
    for name in _WEIGHTS:
        if (folder / name).is_file():
            return load_state_dict(folder / name)[0], config
    raise DreamboothError(f"{FIELD}: '{folder}' holds no VAE weights ({' or '.join(_WEIGHTS)})", field=FIELD)


def _from_ldm(state: dict, config: dict) -> dict:
    """LDM VAE keys (encoder.down.0.block.0…) to diffusers' (encoder.down_blocks.0.resnets.0…)."""
    table = {ldm: diffusers for diffusers, ldm in vae_pairs(config)}
    out = {}
    for key, tensor in state.items():
        if key.startswith("model_ema.") or key in ("model_ema.decay", "model_ema.num_updates"):
            continue
        (name, value), = _rename({key: tensor}, table, "VAE").items()
        if _is_vae_attn_linear(key) and tensor.ndim == 4:  # 1x1 convs in LDM, linears in diffusers
            value = value.reshape(value.shape[0], value.shape[1])
        out[name] = value
    return out


def vae_weights(path: str, base_config: dict) -> tuple[dict, dict]:
    """(diffusers state dict, config) of the VAE at `path`; a single file takes `base_config` (the model's VAE)."""
    source = Path(str(path).strip()).expanduser()
    if source.is_dir():
        return _folder_weights(source)
    if not source.is_file():
        raise DreamboothError(f"{FIELD}: {shorten(str(path))} does not exist: choose a VAE file (models/VAE) or a "
                              "diffusers VAE folder, or leave it empty for the model's own VAE", field=FIELD)
    try:
        state = load_state_dict(source)[0]
    except DreamboothError as error:
        raise DreamboothError(f"{FIELD}: {error}", field=FIELD) from None
    if any(key.startswith(_LDM_PREFIX) for key in state):  # a whole checkpoint: its VAE part
        state = {k[len(_LDM_PREFIX):]: v for k, v in state.items() if k.startswith(_LDM_PREFIX)}
    if any(".down_blocks." in key or ".mid_block." in key for key in state):
        return state, base_config  # already diffusers keys
    try:
        return _from_ldm(state, base_config), base_config
    except DreamboothError:
        raise DreamboothError(f"{FIELD}: '{source.name}' is not a Stable Diffusion VAE of this model's kind "
                              "(its keys do not match)", field=FIELD) from None


def load_vae(path: str, base_config: dict):
    """An AutoencoderKL holding the VAE at `path`, fp32 on the CPU; it must have the shapes of the VAE that
    `base_config` (the model's own VAE config) describes."""
    from diffusers import AutoencoderKL

    base_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(base_config).items()
                   if not k.startswith("_")}
    state, config = vae_weights(path, base_config)
    vae = AutoencoderKL.from_config(config)
    own = vae.state_dict()
    wrong = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong or config.get("latent_channels") != base_config.get("latent_channels"):
        raise DreamboothError(f"{FIELD}: this VAE does not fit the model (e.g. {wrong[:2]} missing or of another "
                              "shape): choose a VAE made for this model type", field=FIELD)
    vae.load_state_dict({k: state[k] for k in own})
    return vae.float()
