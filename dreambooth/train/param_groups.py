"""What trains and how its gradients are bounded: train_unet, freeze_clip_normalization, the text encoder's
own weight decay (tenc_weight_decay) and gradient clipping (tenc_grad_clip_norm).

The optimizer always has two groups, [UNet, text encoder] (either may be empty), so that resume and the
learning-rate bookkeeping find each at the same index.
"""
from __future__ import annotations

from ..config import TrainConfig
from ..errors import DreamboothError


def check_something_trains(cfg: TrainConfig) -> None:
    """train_unet off leaves the text encoder alone to train, for the whole run."""
    if not cfg.train_unet and cfg.stop_text_encoder < 1:
        raise DreamboothError(
            f"train_unet is off and the text encoder trains for stop_text_encoder = {cfg.stop_text_encoder:g} of "
            "the run, so nothing would train " + ("at all" if cfg.stop_text_encoder <= 0 else "after that") +
            ": set stop_text_encoder to 1, or turn train_unet on", field="train_unet")


def freeze_unet(unet) -> None:
    """train_unet off: no UNet weight gets a gradient (so it stays bit-identical); gradients still flow
    through it to the text encoder."""
    unet.requires_grad_(False)


def freeze_clip_norms(text_encoder) -> list:
    """freeze_clip_normalization: the text encoder's layer norms keep their weights and it runs in eval
    mode (no dropout). Returns the parameters frozen."""
    import torch

    frozen = [p for module in text_encoder.modules() if isinstance(module, torch.nn.LayerNorm)
              for p in module.parameters(recurse=False)]
    for param in frozen:
        param.requires_grad_(False)
        param.grad = None
    text_encoder.eval()
    return frozen


def optimizer_groups(cfg: TrainConfig, unet, text_encoder, learning_rates: list[float],
                     text_encoder_training: bool) -> list[dict]:
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": learning_rates[0]}]
    if text_encoder_training:
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad],
                       "lr": learning_rates[1], "weight_decay": cfg.tenc_weight_decay})
    return groups


def clip_gradients(clip, unet_params: list, text_encoder_params: list, max_grad_norm: float,
                   text_encoder_norm: float) -> None:
    """`clip` is accelerate's clip_grad_norm_. With text_encoder_norm > 0 the text encoder is clipped on its
    own and the UNet by max_grad_norm; otherwise both together by max_grad_norm (0 = no clipping)."""
    if text_encoder_norm > 0 and text_encoder_params:
        clip(text_encoder_params, text_encoder_norm)
        if max_grad_norm > 0 and unet_params:
            clip(unet_params, max_grad_norm)
    elif max_grad_norm > 0:
        clip(unet_params + text_encoder_params, max_grad_norm)
