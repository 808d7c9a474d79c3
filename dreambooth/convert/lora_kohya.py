"""LoRA files in the kohya layout: what the WebUI's built-in Lora loader, kohya's tools and diffusers'
`load_lora_weights` read.

One adapted layer is three tensors under one name: `<name>.lora_down.weight` (rank × in [× k × k]),
`<name>.lora_up.weight` (out × rank [× 1 × 1]) and `<name>.alpha` (a scalar). The layer's change is
`alpha / rank × up @ down`. The name is a prefix (`lora_unet`, `lora_te`; SDXL's `lora_te1`/`lora_te2`)
and a module path with dots as underscores, e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`; which
path (diffusers', or for SDXL the LDM one) lora_layout.py decides.

Safetensors metadata follows kohya's `ss_*` keys (the WebUI shows them), plus our own.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..errors import DreamboothError
from ..platform.diskspace import tensor_bytes
from ..platform.fsutil import atomic_path

UNET_PREFIX = "lora_unet"
TEXT_PREFIX = "lora_te"
TEXT_1_PREFIX, TEXT_2_PREFIX = "lora_te1", "lora_te2"  # SDXL's CLIP-L and OpenCLIP-bigG
TEXT_PREFIXES = (TEXT_PREFIX, TEXT_1_PREFIX, TEXT_2_PREFIX)
PREFIXES = (UNET_PREFIX,) + TEXT_PREFIXES
DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"


def kohya_name(prefix: str, module_name: str) -> str:
    """`lora_unet` + `down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return f"{prefix}_{module_name.replace('.', '_')}"


def text_prefix_of(name: str) -> str | None:
    """The text-encoder prefix a layer name starts with, or None (a UNet layer)."""
    return next((prefix for prefix in TEXT_PREFIXES if name.startswith(prefix + "_")), None)


def split_layers(tensors: dict) -> dict[str, dict]:
    """{layer name: {"down", "up", "alpha"}} from a kohya state dict; anything else is an error."""
    layers: dict[str, dict] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        kind = {DOWN: "down", UP: "up", ALPHA: "alpha"}.get(part)
        if kind is None or not name.startswith(tuple(p + "_" for p in PREFIXES)):
            raise DreamboothError(f"'{key}' is not a LoRA key this program reads (kohya's lora_unet_…/lora_te_… "
                                  "with lora_down, lora_up and alpha; LyCORIS/LoHa files are not supported)",
                                  field="lora_model_name")
        layers.setdefault(name, {})[kind] = tensor
    for name, parts in layers.items():
        if "down" not in parts or "up" not in parts:
            raise DreamboothError(f"LoRA layer '{name}' lacks its lora_down or lora_up weight", field="lora_model_name")
    return layers


def layer_delta(down, up, alpha, weight_shape):
    """The change one layer makes to its weight, shaped like the weight: alpha / rank × up @ down.
    A missing alpha means alpha = rank (scale 1), as kohya reads it."""
    import torch

    rank = down.shape[0]
    scale = (float(alpha) if alpha is not None else rank) / rank
    product = up.reshape(up.shape[0], rank).float() @ down.reshape(rank, -1).float()
    return (product * scale).reshape(weight_shape)


def merge_into(state_dict: dict, layer_name: Callable[[str], str | None], layers: dict[str, dict],
               weight: float) -> set[str]:
    """Add `weight` × each layer's delta to the matching `<module>.weight` in `state_dict` (in place: the
    tensors of a module's state_dict are its parameters); `layer_name(module)` names a module's layer.
    Returns the layer names merged."""
    import torch

    merged = set()
    for key, tensor in state_dict.items():
        if not key.endswith(".weight"):
            continue
        name = layer_name(key[:-len(".weight")])
        parts = layers.get(name)
        if parts is None:
            continue
        delta = layer_delta(parts["down"], parts["up"], parts.get("alpha"), tensor.shape)
        with torch.no_grad():
            tensor.add_((weight * delta).to(tensor.dtype, copy=False).to(tensor.device))
        merged.add(name)
    return merged


def read_lora_file(path: Path) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a .safetensors LoRA file, never unpickling anything."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise DreamboothError(f"LoRA file '{path.name}' must be a .safetensors file", field="lora_model_name")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError) as error:
        raise DreamboothError(f"LoRA file '{path}' cannot be read ({error})", field="lora_model_name") from None
    split_layers(tensors)  # rejects what is not a kohya LoRA
    return tensors, dict(metadata)


def write_lora_file(path: Path, tensors: dict, metadata: dict[str, str], half: bool = False) -> Path:
    """Write atomically; `half` stores the weights in fp16 (alphas stay fp32 scalars)."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu")
        if half and tensor.is_floating_point() and not key.endswith(ALPHA):
            tensor = tensor.to(torch.float16)
        out[key] = tensor.contiguous()
    with atomic_path(path, need=tensor_bytes(out)) as tmp:
        save_file(out, str(tmp), metadata={str(k): str(v) for k, v in metadata.items()})
    return Path(path)


def file_hashes(path: Path | None) -> dict[str, str]:
    """The base model's hashes as kohya records them: `ss_new_sd_model_hash` (SHA-256 of the file, the WebUI's
    hash) and `ss_sd_model_hash` (the WebUI's legacy 8-digit hash of 64 KiB at 1 MiB)."""
    if path is None or not Path(path).is_file():
        return {}
    full = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            full.update(chunk)
        handle.seek(0x100000)
        legacy = hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
    return {"ss_new_sd_model_hash": full.hexdigest(), "ss_sd_model_hash": legacy}


def training_metadata(*, base_model: str, base_hashes: dict[str, str], model_type: str, unet_rank: int,
                      unet_alpha: float, text_rank: int | None, text_alpha: float | None, conv: bool, steps: int,
                      resolution: int, unet_lr: float, text_lr: float | None, version: str, model_name: str) -> dict:
    """kohya's `ss_*` keys (the WebUI's Lora tab shows them) and ours (`dreambooth_tab_*`)."""
    args = {"conv_dim": str(unet_rank), "conv_alpha": f"{unet_alpha:g}"} if conv else {}
    info = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(unet_rank),
        "ss_network_alpha": f"{unet_alpha:g}",
        "ss_network_args": json.dumps(args) if args else "",
        "ss_sd_model_name": base_model,
        "ss_v2": str(model_type.startswith("v2")),
        "ss_base_model_version": "sd_v2" if model_type.startswith("v2") else ("sdxl_base_v1-0" if model_type == "SDXL" else "sd_v1"),
        "ss_steps": str(steps),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_unet_lr": f"{unet_lr:g}",
        "ss_text_encoder_lr": f"{text_lr:g}" if text_lr is not None else "",
        "ss_output_name": model_name,
        "dreambooth_tab_version": version,
        "dreambooth_tab_text_rank": str(text_rank) if text_rank else "",
        "dreambooth_tab_text_alpha": f"{text_alpha:g}" if text_alpha else "",
        **base_hashes,
    }
    return {k: v for k, v in info.items() if v != ""}
