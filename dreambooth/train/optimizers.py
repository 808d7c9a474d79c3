"""Optimizer construction. Extra packages are imported only when their optimizer is chosen.

`groups` are torch parameter groups, each with its own "lr" (UNet and text encoder train at their own rates).
"""
from __future__ import annotations

import importlib

from ..errors import DreamboothError


def _require(module: str, package: str, optimizer: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DreamboothError(
            f"optimizer = '{optimizer}' needs the {package} package: pip install {package}, "
            "or choose 'Torch AdamW'", field="optimizer") from None


def fused_adamw_supported(groups: list[dict]) -> bool:
    """Whether this torch has a fused AdamW kernel for every parameter's device and dtype.

    Fused is much faster, but its devices vary by release: torch 2.1 (AUTOMATIC1111's) has it for CUDA
    only and raises on a CPU tensor; CPU kernels arrived in 2.4. torch lists them itself.
    """
    import torch

    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # older than 2.1: no fused AdamW at all
        return False
    supported = set(_get_fused_kernels_supported_devices())
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.device.type in supported and torch.is_floating_point(p) for p in params)


def build_optimizer(name: str, groups: list[dict], weight_decay: float):
    import torch

    if name == "Torch AdamW":
        options = {"fused": True} if fused_adamw_supported(groups) else {}
        return torch.optim.AdamW(groups, weight_decay=weight_decay, **options)
    if name in ("8bit AdamW", "Lion", "8bit Lion"):
        bnb = _require("bitsandbytes", "bitsandbytes", name)
        kind = {"8bit AdamW": bnb.optim.AdamW8bit, "Lion": bnb.optim.Lion, "8bit Lion": bnb.optim.Lion8bit}[name]
        return kind(groups, weight_decay=weight_decay)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        # a fixed learning rate from our scheduler, not Adafactor's own relative-step schedule
        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    if name == "Prodigy":
        prodigy = _require("prodigyopt", "prodigyopt", name)
        return prodigy.Prodigy(groups, weight_decay=weight_decay)
    if name == "AdamW Dadaptation":
        dadaptation = _require("dadaptation", "dadaptation", name)
        return dadaptation.DAdaptAdam(groups, weight_decay=weight_decay, decouple=True)
    raise DreamboothError(f"optimizer = {name!r} is not supported", field="optimizer")
