"""Optimizer construction. Extra packages are imported only when their optimizer is chosen."""
from __future__ import annotations

import inspect

from ..errors import DreamboothError


def build_optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    if name == "Torch AdamW":
        options = {}
        # fused AdamW is much faster where torch offers it (CUDA, and CPU in recent releases)
        if "fused" in inspect.signature(torch.optim.AdamW).parameters:
            options["fused"] = True
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **options)
    if name == "8bit AdamW":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise DreamboothError(
                "optimizer = '8bit AdamW' needs the bitsandbytes package: pip install bitsandbytes, "
                "or choose 'Torch AdamW'", field="optimizer") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise DreamboothError(f"optimizer = {name!r} is not supported", field="optimizer")
