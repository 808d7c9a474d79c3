"""Everything a run needs before the first step: device and precision, models, data, optimizer, schedule."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from ..config import TrainConfig
from ..model.attention import set_attention
from ..store import ModelDir


def resolve_precision(requested: str, device_type: str, log: Callable[[str], None]) -> str:
    """The mixed precision the device can really do; says so when it differs from the request."""
    import torch

    if requested == "no":
        return "no"
    if device_type == "cpu" and requested == "fp16":
        log("mixed_precision fp16 is not supported on the CPU: training in fp32 (bf16 works on a CPU)")
        return "no"
    if device_type == "cpu" and requested == "bf16":
        log("mixed_precision bf16 on the CPU: the weights and optimizer stay fp32 and the UNet computes in "
            "bf16 autocast; on most CPUs this is slower than fp32 (mixed_precision no) and no less memory")
        return "bf16"
    if device_type == "cuda" and requested == "bf16" and not torch.cuda.is_bf16_supported():
        log("mixed_precision bf16 is not supported by this GPU: using fp16")
        return "fp16"
    return requested


def make_accelerator(cfg: TrainConfig, log: Callable[[str], None]):
    """Device placement, mixed precision and (under `accelerate launch`) distributed training."""
    import torch
    from accelerate import Accelerator

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.mixed_precision, device_type, log)
    reset_accelerate_state()
    # Gradient accumulation is done by the loop itself so that an epoch's last, shorter group still
    # makes an optimizer step (the interval plan counts on it).
    return Accelerator(mixed_precision=precision, cpu=device_type == "cpu", kwargs_handlers=autocast_without_cache())


def autocast_without_cache() -> list:
    """Autocast keeps the low-precision copy of every weight it casts until its region ends: with the forward
    pass as the region, a second copy of the UNet in bf16/fp16 (1.7 GB at SD1.5). Without the cache each
    layer casts its weight when it runs; with gradient checkpointing the copies are not kept for backward
    either. accelerate before 0.22 has no AutocastKwargs (its forward wrapper then keeps torch's cache)."""
    try:
        from accelerate.utils import AutocastKwargs
    except ImportError:
        return []
    return [AutocastKwargs(cache_enabled=False)]


def reset_accelerate_state() -> None:
    """Forget the previous run's accelerator settings, so that the next run in this process (the tab, the
    standalone server, the REST API) may use another mixed_precision: accelerate keeps them in a
    process-wide singleton and refuses a second Accelerator that differs.

    Only AcceleratorState (precision, plugins) and GradientState are reset; PartialState holds the
    distributed process group, which must survive (re-initialising it fails under `accelerate launch`).
    `_reset_state` exists in accelerate 0.21 through 1.x; the fallbacks clear the same shared dicts."""
    from accelerate.state import AcceleratorState, GradientState

    reset = getattr(AcceleratorState, "_reset_state", None)
    if reset is not None:
        reset(reset_partial_state=False)
    else:
        AcceleratorState._shared_state.clear()
    reset = getattr(GradientState, "_reset_state", None)
    if reset is not None:
        reset()
    else:
        GradientState._shared_state.clear()


def pick_seed(seed: int) -> int:
    return seed if seed >= 0 else random.randrange(2**31)


@dataclass
class Models:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    attention: str = "sdpa"


def load_models(model: ModelDir, device, cfg: TrainConfig) -> Models:
    from ..convert.diffusers_io import load_components

    unet, vae, text_encoder, tokenizer, scheduler_config = load_components(model.working)
    if cfg.pretrained_vae_name_or_path.strip():  # latents are encoded (and samples decoded) with it
        from ..convert.vae_file import load_vae

        vae = load_vae(cfg.pretrained_vae_name_or_path, vae.config)
    if getattr(text_encoder, "is_dual_text_encoder", False):  # SDXL: which of its two encoders may train
        select_sdxl_text_encoders(text_encoder, cfg)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
        frozen.to(device)
    unet.to(device)
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    attention = set_attention((unet, vae), cfg.attention, getattr(device, "type", str(device)))
    if cfg.compile_unet:  # in place: the module (state_dict, save_pretrained) stays a plain UNet
        unet.compile()
    return Models(unet, vae, text_encoder, tokenizer, dict(scheduler_config), attention)


def select_sdxl_text_encoders(text_encoder, cfg: TrainConfig) -> None:
    from ..errors import DreamboothError

    if cfg.stop_text_encoder > 0 and not (cfg.sdxl_train_text_encoder or cfg.sdxl_train_text_encoder_2):
        raise DreamboothError(f"stop_text_encoder is {cfg.stop_text_encoder:g} but neither SDXL text encoder is "
                              "chosen to train: turn on sdxl_train_text_encoder (CLIP-L) and/or "
                              "sdxl_train_text_encoder_2 (OpenCLIP-bigG), or set stop_text_encoder to 0",
                              field="sdxl_train_text_encoder")
    text_encoder.select_trained(cfg.sdxl_train_text_encoder, cfg.sdxl_train_text_encoder_2)


def compute_dtype(mixed_precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def cast_frozen(models: Models, mixed_precision: str, text_encoder_frozen: bool) -> list[str]:
    """Frozen modules in the compute dtype (as diffusers' examples do with `weight_dtype`): their weights
    never need fp32 master copies. The VAE is always frozen; the text encoder only when it never trains
    (a text encoder that trains for part of the run keeps fp32 weights for its optimizer). Returns the
    names of the modules cast."""
    dtype = compute_dtype(mixed_precision)
    cast = []
    if dtype is compute_dtype("no"):
        return cast
    # SDXL's VAE overflows in fp16 (NaN latents): it stays fp32 there, as in diffusers' SDXL example
    vae_fits = not (dtype is compute_dtype("fp16") and getattr(models.unet.config, "addition_embed_type", None))
    frozen = ([("vae", models.vae)] if vae_fits else []) + (
        [("text_encoder", models.text_encoder)] if text_encoder_frozen else [])
    for name, module in frozen:
        module.to(dtype=dtype)
        cast.append(name)
    return cast


def text_encoder_epochs(stop_ratio: float, epochs: int) -> int:
    """Epochs during which the text encoder trains: the first round(epochs × ratio), at least 1 if asked."""
    if stop_ratio <= 0:
        return 0
    return max(1, round(epochs * stop_ratio))


def set_text_encoder_trainable(text_encoder, trainable: bool, checkpointing: bool) -> None:
    text_encoder.requires_grad_(trainable)
    text_encoder.train(trainable)
    if not trainable:  # no gradient at all, so the optimizer leaves it alone (momentum included)
        for param in text_encoder.parameters():
            param.grad = None
    if trainable and checkpointing:
        text_encoder.gradient_checkpointing_enable()
