"""Performance Wizard: VRAM + image count -> parameter changes, each with the reason it was chosen.

A pure function (no torch, no I/O) so it is table-tested; the tab reads the VRAM and counts the images.
"""
from __future__ import annotations

from .errors import DreamboothError
from .registry import ALL_MODEL_TYPES

_NATIVE_RESOLUTION = {"v1x": 512, "v2x-512": 512, "v2x": 768, "SDXL": 1024}


def recommend(vram_gb: float | None, image_count: int, model_type: str = "v1x",
              bnb_available: bool = False, xformers_available: bool = False,
              bf16_available: bool | None = None, made_for: int | None = None) -> tuple[dict, list[str]]:
    """Settings for a GPU with `vram_gb` GB (None or 0 = no GPU: CPU/MPS) and `image_count` instance images.
    `bf16_available`: whether the GPU computes in bf16 (None = not known: assumed, with a note).
    `made_for`: the resolution the model itself was built for (its UNet's sample size), when known; it
    wins over the type's usual size (a tiny demo model is made for 64 px, not 512).

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

    if made_for:
        changes["resolution"] = made_for
        reasons.append(f"resolution = {made_for}: the size this model was made for")
    else:
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
        _sdxl_gpu(vram, images, bnb_available, bf16_available, changes, reasons)
    else:
        if vram < 12 and bf16_available is not False:  # precision, optimizer and accumulation chosen with it
            _fused_backward(changes, reasons, vram, bnb_available, bf16_available)
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

    # LoRA when even the leanest full fine-tune does not fit: SD1.x needs about 6 GB with the fused backward
    # pass (fp32 weights 3.4 GB + Adafactor + activations) and about 10 GB without it (8bit AdamW, checkpointing;
    # T4 figure, peers.md); SDXL what _sdxl_choice computes. A LoRA keeps the base frozen.
    if sdxl:
        full_fits = not gpu or _sdxl_choice(vram, bnb_available, bf16_available)[2]
        full_needs = "about 16 GB even with Adafactor and the fused backward pass"
    else:
        fused_possible = bf16_available is not False
        full_fits = not gpu or vram >= (6 if fused_possible else 10)
        full_needs = ("about 6 GB even with the fused backward pass" if fused_possible
                      else "about 10 GB with 8bit AdamW and gradient checkpointing")
    changes["use_lora"] = not full_fits
    if changes["use_lora"]:
        reasons.append(f"use_lora = True: a full {model_type} fine-tune needs {full_needs}; a LoRA keeps the base "
                       f"frozen (no gradients or optimizer state for it), fits in {vram:g} GB and writes a small file "
                       "to models/Lora")
    else:
        reasons.append("use_lora = False: " + ("a full fine-tune fits (a LoRA is still your choice: less memory, a "
                                               "small file)" if gpu else
                                               "no GPU, so RAM is the limit and a full fine-tune fits"))
    if not changes.get("fused_backward_pass"):
        # Effective batch ~ images / 5, between 1 and 8: small sets keep per-image updates, big sets smooth out.
        target = max(1, min(8, images // 5))
        batch = changes["train_batch_size"]
        accumulation = max(1, target // batch)
        changes["gradient_accumulation_steps"] = accumulation
        reasons.append(f"gradient_accumulation_steps = {accumulation}: effective batch {batch * accumulation} "
                       f"for {images} images (about one fifth, 1 to 8)")
    if gpu and not sdxl and vram < 12 and bf16_available is False and not changes["use_lora"]:
        reasons.append(f"warning: a full fine-tune needs about 12 GB without the fused backward pass, which needs "
                       f"bf16 (this GPU has none); expect out-of-memory errors at {vram:g} GB")
    if sdxl and gpu and vram < 10:
        reasons.append(f"warning: {vram:g} GB is tight even for an SDXL LoRA (about 8 GB, 10 recommended); "
                       "expect out-of-memory errors")
    if gpu:
        changes["attention"] = "xformers" if xformers_available else "sdpa"
        reasons.append("attention = " + ("xformers: it is importable here" if xformers_available
                                         else "sdpa: PyTorch's own, as fast as xformers on recent GPUs"))
    if changes.get("fused_backward_pass") and changes.get("stop_text_encoder", 0) > 0:
        changes["tenc_grad_clip_norm"] = 0.0
        reasons.append("tenc_grad_clip_norm = 0: the fused backward pass has no whole text encoder gradient to "
                       "clip; max_grad_norm clips each of its tensors instead")
    return changes, reasons


def _fused_backward(changes: dict, reasons: list[str], vram: float, bnb_available: bool,
                    bf16_available: bool | None) -> None:
    """Below 12 GB (SD1.x scale) the fp32 gradients of a full fine-tune (3.4 GB at SD1.5) do not fit beside the
    weights and optimizer state: step each weight inside the backward pass and free its gradient at once."""
    changes.update(fused_backward_pass=True, gradient_accumulation_steps=1, mixed_precision="bf16")
    reasons.append(f"fused_backward_pass = True: at {vram:g} GB the UNet's gradients do not fit beside its weights; "
                   "each weight is stepped and its gradient freed during the backward pass")
    reasons.append("gradient_accumulation_steps = 1: the fused backward pass applies every batch at once")
    reasons.append("mixed_precision = bf16: the fused backward pass cannot use fp16's loss scaler"
                   + (" (bf16 needs an RTX 30xx or newer; on older GPUs turn fused_backward_pass off)"
                      if bf16_available is None else ""))
    if vram < 8 or not bnb_available:
        changes["optimizer"] = "Adafactor"
        reasons.append("optimizer = Adafactor: almost no optimizer state (factored second moments, no momentum), "
                       + (f"so the weights fit in {vram:g} GB" if vram < 8 else "and bitsandbytes is not usable"))
    else:
        changes["optimizer"] = "8bit AdamW"
        reasons.append(f"optimizer = 8bit AdamW: {vram:g} GB is tight and bitsandbytes is usable "
                       "(optimizer state in 8 bits)")


# SDXL's UNet has 2.57 billion parameters, trained with fp32 weights (4 bytes each), fp32 gradients (4 more;
# none kept with the fused backward pass, which frees each as soon as its tensor is stepped) and the
# optimizer's state (AdamW 8 bytes, 8-bit AdamW 2, Adafactor's factored moments almost none). On top come
# activations at 1024 px with gradient checkpointing, the VAE and the CUDA context: about 6 GB, from
# kohya's sd-scripts measurement of a fused-backward Adafactor fine-tune with fp32 weights (16.4 GB in all).
SDXL_UNET_PARAMETERS = 2.567e9
SDXL_OVERHEAD_GB = 6.0
_STATE_BYTES = {"Torch AdamW": 8, "8bit AdamW": 2, "Adafactor": 0}
# best first: the stronger optimizer, and for the same one the ordinary pass (it allows accumulation)
_SDXL_CHOICES = [(optimizer, fused) for optimizer in _STATE_BYTES for fused in (False, True)]


def sdxl_static_gb(optimizer: str, fused: bool = False) -> float:
    """GB held by the SDXL UNet's fp32 weights, gradients (none when fused) and `optimizer` state."""
    return SDXL_UNET_PARAMETERS * (4 + (0 if fused else 4) + _STATE_BYTES[optimizer]) / 1e9


def _sdxl_choice(vram: float, bnb: bool, bf16: bool | None) -> tuple[str, bool, bool]:
    """(optimizer, fused backward pass, fits): the best that fits in `vram`, else the smallest there is."""
    usable = [(o, f) for o, f in _SDXL_CHOICES if (bnb or o != "8bit AdamW") and (bf16 is not False or not f)]
    for optimizer, fused in usable:
        if sdxl_static_gb(optimizer, fused) + SDXL_OVERHEAD_GB <= vram:
            return optimizer, fused, True
    optimizer, fused = min(usable, key=lambda choice: sdxl_static_gb(*choice))
    return optimizer, fused, False


def _sdxl_gpu(vram: float, images: int, bnb: bool, bf16: bool | None, changes: dict, reasons: list[str]) -> None:
    """SDXL on a GPU: the optimizer (and fused backward pass) that fits first, then what the room left allows."""
    optimizer, fused, fits = _sdxl_choice(vram, bnb, bf16)
    static = sdxl_static_gb(optimizer, fused)
    changes.update(optimizer=optimizer, fused_backward_pass=fused, mixed_precision="bf16" if fused else "fp16")
    reasons.append(f"optimizer = {optimizer}, fused_backward_pass = {fused}: the SDXL UNet's fp32 weights"
                   + ("" if fused else ", gradients") + f" and optimizer state take about {static:.0f} GB, plus "
                   f"about {SDXL_OVERHEAD_GB:.0f} GB for activations at 1024 px"
                   + (" (each gradient freed as soon as its weight is stepped)" if fused else ""))
    if fused:
        changes["gradient_accumulation_steps"] = 1
        reasons.append("gradient_accumulation_steps = 1: the fused backward pass applies every batch at once")
        reasons.append("mixed_precision = bf16: the fused backward pass cannot use fp16's loss scaler"
                       + (" (bf16 needs an RTX 30xx or newer; on older GPUs turn fused_backward_pass off)"
                          if bf16 is None else ""))
    else:
        reasons.append("mixed_precision = fp16: halves activation memory (SDXL's VAE stays fp32: it overflows in fp16)")
    room = vram - static - SDXL_OVERHEAD_GB
    left = f"about {room:.0f} GB to spare" if room >= 1 else "no room to spare"
    checkpointing = room < 24
    changes["gradient_checkpointing"] = checkpointing
    reasons.append(f"gradient_checkpointing = {checkpointing}: {left}; "
                   + ("without it 1024 px SDXL activations need some 24 GB more" if checkpointing
                      else "off is ~20% faster"))
    batch = 4 if room >= 40 else 2 if room >= 16 else 1
    changes["train_batch_size"] = min(batch, images)
    reasons.append(f"train_batch_size = {changes['train_batch_size']}: {left} at 1024 px"
                   + (f" (capped at the {images} images)" if batch > images else ""))
    changes["sample_batch_size"] = 2 if room >= 16 else 1
    reasons.append(f"sample_batch_size = {changes['sample_batch_size']}: SDXL previews/class images per batch")
    train_clip_l = room >= 4  # CLIP-L: 123M parameters, about 2 GB with AdamW
    changes.update(stop_text_encoder=0.75 if train_clip_l else 0.0, sdxl_train_text_encoder=train_clip_l,
                   sdxl_train_text_encoder_2=False)
    reasons.append(f"stop_text_encoder = {changes['stop_text_encoder']}, sdxl_train_text_encoder = {train_clip_l}: "
                   + ("train CLIP-L (about 2 GB more) for the first 75% of the epochs" if train_clip_l
                      else "text encoders frozen and their outputs cached: no room to train them"))
    reasons.append("sdxl_train_text_encoder_2 = False: OpenCLIP-bigG has 695M parameters (about 11 GB more "
                   "with AdamW); turn it on only with that much room to spare")
    changes["use_ema"] = room >= 16
    reasons.append(f"use_ema = {changes['use_ema']}: " + (
        "an EMA copy of the UNet (10 GB) fits" if changes["use_ema"]
        else "an EMA copy of the SDXL UNet takes 10 GB more (or use ema_on_cpu)"))
    if not fits:
        need = static + SDXL_OVERHEAD_GB
        reasons.append(f"{vram:g} GB is below what a full SDXL fine-tune needs (about {need:.1f} GB even "
                       f"with {optimizer}" + (" and the fused backward pass" if fused else "") + "): the settings "
                       "above are the leanest full fine-tune, and use_lora is proposed, since an SDXL LoRA (far "
                       "fewer trained weights) is the way to train SDXL in "
                       + ("12-16 GB" if vram >= 12 else "8 GB, and even that is tight"))
