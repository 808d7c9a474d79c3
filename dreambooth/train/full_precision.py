"""`full_mixed_precision`: the UNet's own weights held in bf16 (no fp32 copy), written as fp32."""
from __future__ import annotations

import contextlib
from typing import Callable


def hold_in_bf16(unet, requested: bool, mixed_precision: str, log: Callable[[str], None]) -> bool:
    """Cast the UNet to bf16 when asked and the run computes in bf16; says why not otherwise. fp16 weights
    would need accelerate's loss scaler, which refuses to unscale fp16 gradients, so they stay fp32."""
    import torch

    if not requested or mixed_precision == "no":
        return False
    if mixed_precision != "bf16":
        log("full_mixed_precision needs mixed_precision bf16 (fp16 weights cannot be trained with a loss "
            "scaler): the UNet keeps fp32 weights")
        return False
    unet.to(dtype=torch.bfloat16)
    log("full_mixed_precision: the UNet's weights are held in bf16")
    return True


@contextlib.contextmanager
def saved_as_fp32(unet, active: bool):
    """working/, checkpoints and snapshots get fp32 weights, as every other run writes them."""
    if not active:
        yield
        return
    import torch

    unet.to(dtype=torch.float32)
    try:
        yield
    finally:
        unet.to(dtype=torch.bfloat16)
