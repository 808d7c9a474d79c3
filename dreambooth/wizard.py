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
    # SDXL needs roughly twice the memory of SD 1.x/2.x for the same settings.
    eff = vram / 2 if sdxl else vram
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
    else:
        changes["mixed_precision"] = "fp16"
        reasons.append("mixed_precision = fp16: halves activation memory on a GPU")
        if bnb_available and eff < 24:
            changes["optimizer"] = "8bit AdamW"
            reasons.append(f"optimizer = 8bit AdamW: {vram:g} GB is tight and bitsandbytes is usable "
                           "(optimizer state in 8 bits)")
        else:
            changes["optimizer"] = "Torch AdamW"
            why = "enough VRAM for full-precision optimizer state" if eff >= 24 else "bitsandbytes is not usable"
            reasons.append(f"optimizer = Torch AdamW: {why}")
        checkpointing = eff < 16
        changes["gradient_checkpointing"] = checkpointing
        reasons.append(f"gradient_checkpointing = {checkpointing}: "
                       + ("saves much VRAM below 16 GB (SD1.x scale), ~20% slower" if checkpointing
                          else "enough VRAM; off is ~20% faster"))
        batch = 4 if eff >= 24 else 2 if eff >= 16 else 1
        changes["train_batch_size"] = min(batch, images)
        reasons.append(f"train_batch_size = {changes['train_batch_size']}: what {vram:g} GB holds "
                       f"for {model_type}" + (f" (capped at the {images} images)" if batch > images else ""))
        changes["sample_batch_size"] = 4 if eff >= 24 else 2 if eff >= 12 else 1
        reasons.append(f"sample_batch_size = {changes['sample_batch_size']}: previews/class images per batch")
        changes["stop_text_encoder"] = 0.75 if eff >= 16 else 0.0
        reasons.append(f"stop_text_encoder = {changes['stop_text_encoder']}: "
                       + ("train the text encoder for the first 75% of the epochs (better likeness)" if eff >= 16
                          else "keep the text encoder frozen below 16 GB (and its outputs cached)"))
        changes["use_ema"] = eff >= 24
        reasons.append(f"use_ema = {changes['use_ema']}: "
                       + ("an EMA copy of the UNet fits in 24 GB and smooths the result" if eff >= 24
                          else "no room for an EMA copy of the UNet below 24 GB"))

    # A full fine-tune of SD1.x needs ~10 GB even with 8bit AdamW and checkpointing (T4 figure, peers.md);
    # SDXL's ~24 GB. Below that a LoRA (frozen base, small adapters and optimizer state) still fits.
    full_needs = 24 if sdxl else 10
    changes["use_lora"] = gpu and vram < full_needs
    if changes["use_lora"]:
        reasons.append(f"use_lora = True: a full {model_type} fine-tune needs about {full_needs} GB even with 8bit "
                       f"AdamW and gradient checkpointing; a LoRA keeps the base frozen (no gradients or optimizer "
                       f"state for it), fits in {vram:g} GB and writes a small file to models/Lora")
    else:
        reasons.append("use_lora = False: " + ("enough VRAM for a full fine-tune (a LoRA is still your choice: "
                                               "less memory, a small file)" if gpu else
                                               "no GPU, so RAM is the limit and a full fine-tune fits"))

    # Effective batch ~ images / 5, between 1 and 8: small sets keep per-image updates, big sets smooth out.
    target = max(1, min(8, images // 5))
    batch = changes["train_batch_size"]
    accumulation = max(1, target // batch)
    changes["gradient_accumulation_steps"] = accumulation
    reasons.append(f"gradient_accumulation_steps = {accumulation}: effective batch {batch * accumulation} "
                   f"for {images} images (about one fifth, 1 to 8)")
    if sdxl and gpu and vram < 10:
        reasons.append(f"warning: {vram:g} GB is tight even for an SDXL LoRA (about 8 GB, 10 recommended); "
                       "expect out-of-memory errors")
    if gpu:
        reasons.append("attention: " + ("xformers is importable and is used on CUDA (SDPA if it fails to load)"
                                        if xformers_available else "PyTorch SDPA (as fast as xformers on recent GPUs)"))
    return changes, reasons
