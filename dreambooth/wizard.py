"""Performance Wizard: VRAM + image count -> parameter changes, each with the reason it was chosen.

A pure function (no torch, no I/O) so it is table-tested; the tab reads the VRAM and counts the images.
"""
from __future__ import annotations

from .errors import DreamboothError
from .registry import ALL_MODEL_TYPES

_NATIVE_RESOLUTION = {"v1x": 512, "v2x-512": 512, "v2x": 768, "SDXL": 1024}


def recommend(vram_gb: float | None, image_count: int, model_type: str = "v1x",
              bnb_available: bool = False, xformers_available: bool = False) -> tuple[dict, list[str]]:
    """Settings for a GPU with `vram_gb` GB (None or 0 = no GPU: CPU/MPS) and `image_count` instance images.

    Returns (changes: field name -> value, reasons: one readable line per decision).
    """
    if model_type not in ALL_MODEL_TYPES:
        raise DreamboothError(f"model type '{model_type}' is unknown: expected one of {', '.join(ALL_MODEL_TYPES)}",
                              field="model_type")
    try:
        vram = float(vram_gb or 0)
        images = int(image_count)
    except (TypeError, ValueError):
        raise DreamboothError("wizard: VRAM (GB) and image count must be numbers", field="vram_gb") from None
    if vram < 0 or vram > 4096:
        raise DreamboothError(f"wizard: VRAM = {vram_gb} GB is not possible: enter 0 (no GPU) to 4096",
                              field="vram_gb")
    if images < 1:
        raise DreamboothError("wizard: no instance images found: set a concept's dataset directory first",
                              field="instance_data_dir")

    changes: dict = {}
    reasons: list[str] = []
    sdxl = model_type == "SDXL"
    gpu = vram > 0

    resolution = _NATIVE_RESOLUTION[model_type]
    changes["resolution"] = resolution
    reasons.append(f"resolution = {resolution}: the native size of a {model_type} model")

    if not gpu:
        changes.update(mixed_precision="no", train_batch_size=1, sample_batch_size=1,
                       gradient_checkpointing=False, optimizer="Torch AdamW")
        reasons.append("no GPU: mixed_precision = no (fp16 falls back to fp32 on a CPU); "
                       "train_batch_size = 1 and sample_batch_size = 1 (CPU time grows with the batch)")
        reasons.append("no GPU: gradient_checkpointing = False (RAM is plentiful, it only costs time)")
        reasons.append("no GPU: optimizer = Torch AdamW (fused on a CPU; 8bit AdamW saves RAM there but is slower)")
        changes.update(stop_text_encoder=0.0, use_ema=False)
        reasons.append("no GPU: stop_text_encoder = 0 and use_ema = False (each costs time on a CPU)")
    elif sdxl:
        _sdxl_gpu(vram, images, bnb_available, changes, reasons)
    else:
        changes["mixed_precision"] = "fp16"
        reasons.append("mixed_precision = fp16: halves activation memory on a GPU")
        if bnb_available and vram < 24:
            changes["optimizer"] = "8bit AdamW"
            reasons.append(f"optimizer = 8bit AdamW: {vram:g} GB is tight and bitsandbytes is usable "
                           "(optimizer state in 8 bits)")
        else:
            changes["optimizer"] = "Torch AdamW"
            why = "enough VRAM for full-precision optimizer state" if vram >= 24 else "bitsandbytes is not usable"
            reasons.append(f"optimizer = Torch AdamW: {why}")
        checkpointing = vram < 16
        changes["gradient_checkpointing"] = checkpointing
        reasons.append(f"gradient_checkpointing = {checkpointing}: "
                       + ("saves much VRAM below 16 GB (SD1.x scale), ~20% slower" if checkpointing
                          else "enough VRAM; off is ~20% faster"))
        batch = 4 if vram >= 24 else 2 if vram >= 16 else 1
        changes["train_batch_size"] = min(batch, images)
        reasons.append(f"train_batch_size = {changes['train_batch_size']}: what {vram:g} GB holds "
                       f"for {model_type}" + (f" (capped at the {images} images)" if batch > images else ""))
        changes["sample_batch_size"] = 4 if vram >= 24 else 2 if vram >= 12 else 1
        reasons.append(f"sample_batch_size = {changes['sample_batch_size']}: previews/class images per batch")
        changes["stop_text_encoder"] = 0.75 if vram >= 16 else 0.0
        reasons.append(f"stop_text_encoder = {changes['stop_text_encoder']}: "
                       + ("train the text encoder for the first 75% of the epochs (better likeness)" if vram >= 16
                          else "keep the text encoder frozen below 16 GB (and its outputs cached)"))
        changes["use_ema"] = vram >= 24
        reasons.append(f"use_ema = {changes['use_ema']}: "
                       + ("an EMA copy of the UNet fits in 24 GB and smooths the result" if vram >= 24
                          else "no room for an EMA copy of the UNet below 24 GB"))

    # Effective batch ~ images / 5, between 1 and 8: small sets keep per-image updates, big sets smooth out.
    target = max(1, min(8, images // 5))
    batch = changes["train_batch_size"]
    accumulation = max(1, target // batch)
    changes["gradient_accumulation_steps"] = accumulation
    reasons.append(f"gradient_accumulation_steps = {accumulation}: effective batch {batch * accumulation} "
                   f"for {images} images (about one fifth, 1 to 8)")
    if gpu:
        reasons.append("attention: " + ("xformers is importable and is used on CUDA (SDPA if it fails to load)"
                                        if xformers_available else "PyTorch SDPA (as fast as xformers on recent GPUs)"))
    return changes, reasons


# SDXL's UNet has 2.57 billion parameters. A full fine-tune keeps fp32 weights and fp32 gradients (8 bytes
# per parameter, 20.5 GB) plus the optimizer's state: AdamW 8 bytes more (41 GB in all), 8-bit AdamW 2 (26 GB),
# Adafactor's factored moments almost nothing (about 21 GB). Activations at 1024 px with gradient
# checkpointing add a few GB per image. kohya's sd-scripts document the same floor: a full SDXL fine-tune
# at batch 1 needs 24 GB with Adafactor and cached text-encoder outputs.
SDXL_UNET_PARAMETERS = 2.567e9
_STATE_BYTES = {"Torch AdamW": 8, "8bit AdamW": 2, "Adafactor": 0}


def sdxl_static_gb(optimizer: str) -> float:
    """GB held by the SDXL UNet's fp32 weights, gradients and `optimizer` state, before activations."""
    return SDXL_UNET_PARAMETERS * (8 + _STATE_BYTES[optimizer]) / 1e9


def _sdxl_gpu(vram: float, images: int, bnb: bool, changes: dict, reasons: list[str]) -> None:
    """SDXL on a GPU: the optimizer that fits first, then what the room left over allows."""
    changes["mixed_precision"] = "fp16"
    reasons.append("mixed_precision = fp16: halves activation memory (SDXL's VAE stays fp32, it overflows in fp16)")
    if vram >= 48:
        optimizer = "8bit AdamW" if bnb else "Torch AdamW"
    else:
        optimizer = "Adafactor"
    static = sdxl_static_gb(optimizer)
    changes["optimizer"] = optimizer
    reasons.append(f"optimizer = {optimizer}: the SDXL UNet's fp32 weights, gradients and its state take about "
                   f"{static:.0f} GB before activations" + (
                       "; the smallest state of all, as kohya's 24 GB SDXL fine-tune uses" if optimizer == "Adafactor"
                       else ""))
    room = vram - static
    checkpointing = room < 24
    changes["gradient_checkpointing"] = checkpointing
    left = f"about {room:.0f} GB left for activations" if room > 0 else f"nothing of {vram:g} GB left for activations"
    reasons.append(f"gradient_checkpointing = {checkpointing}: {left}; " + (
        "1024 px SDXL activations need checkpointing below 24 GB" if checkpointing else "off is ~20% faster"))
    batch = 4 if room >= 40 else 2 if room >= 16 else 1
    changes["train_batch_size"] = min(batch, images)
    reasons.append(f"train_batch_size = {changes['train_batch_size']}: {left} at 1024 px"
                   + (f" (capped at the {images} images)" if batch > images else ""))
    changes["sample_batch_size"] = 2 if vram >= 48 else 1
    reasons.append(f"sample_batch_size = {changes['sample_batch_size']}: SDXL previews/class images per batch at "
                   f"1024 px")
    train_clip_l = room >= 8  # CLIP-L: 123M parameters, about 2 GB with AdamW
    changes["stop_text_encoder"] = 0.75 if train_clip_l else 0.0
    changes["sdxl_train_text_encoder"] = train_clip_l
    changes["sdxl_train_text_encoder_2"] = False
    reasons.append(f"stop_text_encoder = {changes['stop_text_encoder']}, sdxl_train_text_encoder = {train_clip_l}: "
                   + ("train CLIP-L (about 2 GB more) for the first 75% of the epochs" if train_clip_l
                      else "text encoders frozen and their outputs cached: no room to train them"))
    reasons.append("sdxl_train_text_encoder_2 = False: OpenCLIP-bigG has 695M parameters (about 11 GB more "
                   "with AdamW); turn it on only with that much room to spare")
    changes["use_ema"] = room >= 24
    reasons.append(f"use_ema = {changes['use_ema']}: " + (
        "an EMA copy of the UNet (10 GB) fits" if changes["use_ema"]
        else "an EMA copy of the SDXL UNet takes 10 GB more (or use ema_on_cpu)"))
    if vram < 24:
        reasons.append(f"warning: {vram:g} GB is below what a full SDXL fine-tune needs: weights, gradients and "
                       f"Adafactor alone take about {static:.0f} GB, so expect out-of-memory errors; an SDXL LoRA "
                       "(far fewer trained weights) is the way to train SDXL in " + (
                           "12-16 GB" if vram >= 12 else "8 GB, and even that is tight"))
