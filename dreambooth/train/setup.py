"""Everything a run needs before the first step (device and precision, models, data, optimizer, schedule), and
what of it trains from step to step (the text encoder trains only for its first epochs)."""
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


def load_training_models(model: ModelDir, device, cfg: TrainConfig, mixed_precision: str,
                         log: Callable[[str], None]) -> tuple[Models, bool, list[str]]:
    """(models, UNet held in bf16, frozen modules cast to the compute dtype): the models as this run trains them."""
    from .full_precision import hold_in_bf16
    from .param_groups import freeze_unet

    models = load_models(model, device, cfg)
    if not cfg.train_unet:
        freeze_unet(models.unet)
    full_precision = hold_in_bf16(models.unet, cfg.full_mixed_precision, mixed_precision, log)
    cast = cast_frozen(models, mixed_precision, text_encoder_frozen=cfg.stop_text_encoder <= 0)
    if cast:
        log(f"frozen {' and '.join(cast)} in {mixed_precision} (they never train)")
    return models, full_precision, cast


def prepare_training_data(cfg: TrainConfig, model: ModelDir, models: Models, accelerator, control, concepts, pairs,
                          class_image_seed: int, log: Callable[[str], None], progress: Callable[[str], None]):
    """Buckets, class images (generated when missing), bucket report, latent and text caches: the training
    set, prepared by the main process where only one may write, and canceled by the control's Cancel."""
    from ..data.prepare import PreparationInputs, prepare_training_set

    preparation = PreparationInputs(
        cfg=cfg, model=model, models=models, device=accelerator.device, class_image_seed=class_image_seed,
        is_main_process=accelerator.is_main_process, wait_for_everyone=accelerator.wait_for_everyone,
        autocast=accelerator.autocast, log=log, set_state=lambda state: control.update(state=state, detail=""),
        canceled=control.cancel_requested.is_set, progress=progress)
    return prepare_training_set(preparation, concepts, pairs)


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


def stop_text_encoder_training(models: Models, lora, training_set, clip_skip: int) -> None:
    """The text encoder's epochs are over: it freezes (its LoRA adapters too) and its outputs are cached."""
    set_text_encoder_trainable(models.text_encoder, False, False)
    if lora is not None:
        lora.stop_text_training()
    training_set.cache_text(models.text_encoder, clip_skip)  # its outputs are fixed now


def trained_parameter_lists(unet, text_encoder, lora, text_encoder_training: bool) -> tuple[list, list]:
    """(UNet, text encoder) parameters being trained: under LoRA the adapters only, never the frozen base."""
    if lora is not None:
        return lora.trained_parameters(text_encoder_training)
    return ([p for p in unet.parameters() if p.requires_grad],
            [p for p in text_encoder.parameters() if p.requires_grad] if text_encoder_training else [])


def set_text_encoder_trainable(text_encoder, trainable: bool, checkpointing: bool) -> None:
    text_encoder.requires_grad_(trainable)
    text_encoder.train(trainable)
    if not trainable:  # no gradient at all, so the optimizer leaves it alone (momentum included)
        for param in text_encoder.parameters():
            param.grad = None
    if trainable and checkpointing:
        text_encoder.gradient_checkpointing_enable()


def run_learning_rates(cfg: TrainConfig, processes: int, log: Callable[[str], None]) -> list[float]:
    """[UNet, text encoder] learning rates this run trains at; says what scale_lr made of them."""
    from .schedulers import learning_rate_factor, learning_rates

    rates = learning_rates(cfg, processes)
    if cfg.scale_lr:
        log(f"scale_lr: learning rates × {learning_rate_factor(cfg, processes)} (batch {cfg.train_batch_size} × "
            f"accumulation {cfg.gradient_accumulation_steps} × {processes} process(es)): {rates[0]:g}, text encoder "
            f"{rates[1]:g}")
    return rates


def build_training_optimizer(cfg: TrainConfig, models: Models, lora, learning_rates: list[float],
                             text_encoder_training: bool):
    """The optimizer over what trains: the LoRA adapters, or the UNet and (while it trains) the text encoder."""
    from .optimizers import build_optimizer
    from .param_groups import freeze_clip_norms, optimizer_groups

    if lora is not None:
        groups = lora.param_groups(learning_rates)
    else:
        if text_encoder_training:
            set_text_encoder_trainable(models.text_encoder, True, cfg.gradient_checkpointing)
            if cfg.freeze_clip_normalization:
                freeze_clip_norms(models.text_encoder)
        groups = optimizer_groups(cfg, models.unet, models.text_encoder, learning_rates, text_encoder_training)
    return build_optimizer(cfg.optimizer, groups, cfg.weight_decay)


def start_fused_backward(cfg: TrainConfig, optimizer, log: Callable[[str], None]):
    """fused_backward_pass: the optimizer steps each weight during the backward pass (None when off)."""
    if not cfg.fused_backward_pass:
        return None
    from .fused_backward import FusedBackward

    fused = FusedBackward(optimizer, cfg.max_grad_norm)
    log("fused backward pass: each weight is stepped and its gradient freed during the backward pass"
        + (f" (max_grad_norm {cfg.max_grad_norm:g} clips each tensor)" if cfg.max_grad_norm > 0 else ""))
    return fused


def prepare_trained(accelerator, models: Models, lora, optimizer, text_encoder_training: bool) -> tuple:
    """(unet, text_encoder, optimizer) as accelerate prepares them: only what trains is wrapped, so that
    under data parallelism its gradients are the ones averaged across processes (the adapters under LoRA)."""
    if lora is not None:
        from .lora import AdaptedUNet

        unet, optimizer = accelerator.prepare(AdaptedUNet(models.unet, lora.network), optimizer)
        return unet, models.text_encoder, optimizer
    if text_encoder_training:
        unet, text_encoder, optimizer = accelerator.prepare(models.unet, models.text_encoder, optimizer)
        return unet, text_encoder, optimizer
    unet, optimizer = accelerator.prepare(models.unet, optimizer)
    return unet, models.text_encoder, optimizer
