"""Fused backward pass: each weight tensor's optimizer step runs inside the backward pass, as soon as its
gradient is complete, and that gradient is freed at once.

Gradients for the whole model then never exist together, which saves one fp32 copy of the trained
weights (3.4 GB for an SD1.5 UNet) — the same trade kohya's and OneTrainer's `fused_backward_pass` make.
It works with one optimizer and its ordinary state dict, so snapshots, resume and the learning-rate
scheduler are unchanged: the hook shows the optimizer a parameter group holding just that one tensor.

What it cannot do, checked before training starts (`check_fused_backward`):
- gradient accumulation: the summed gradient of several micro-batches would have to be kept;
- several processes: data-parallel averaging of a gradient happens after its hook has run;
- fp16 mixed precision: the loss scaler unscales and checks all gradients together;
- optimizers that adapt the learning rate from statistics over all parameters (Prodigy, D-Adaptation);
- the text encoder's own gradient norm (tenc_grad_clip_norm) while it trains: that norm is over all of its
  gradients together, which never exist at once here.
`max_grad_norm` clips each tensor on its own, since the global norm is known only when the pass ends; it does
so for the text encoder's tensors too.
"""
from __future__ import annotations

from ..errors import DreamboothError

# steps that read only their own parameter's gradient and state, so stepping one tensor at a time is exact
FUSABLE_OPTIMIZERS = ("Torch AdamW", "8bit AdamW", "Adafactor", "Lion", "8bit Lion")


def check_fused_backward(cfg, num_processes: int, mixed_precision: str) -> None:
    """Refuse, naming the setting to change, a combination the fused backward pass cannot train."""
    def refuse(reason: str, field: str) -> None:
        raise DreamboothError(f"fused_backward_pass is on, but {reason}", field=field)

    if cfg.gradient_accumulation_steps > 1:
        refuse(f"gradient_accumulation_steps = {cfg.gradient_accumulation_steps}: set it to 1 (each step's "
               "gradients are applied and freed inside the backward pass), or turn fused_backward_pass off",
               "gradient_accumulation_steps")
    if num_processes > 1:
        refuse(f"{num_processes} processes train together: gradients are averaged across them after the "
               "step would already have run. Train in one process, or turn fused_backward_pass off",
               "fused_backward_pass")
    if mixed_precision == "fp16":
        refuse("mixed_precision is fp16, whose loss scaler needs every gradient at once: use bf16 (RTX 30xx "
               "and newer) or no, or turn fused_backward_pass off", "mixed_precision")
    if cfg.tenc_grad_clip_norm > 0 and cfg.stop_text_encoder > 0:
        refuse(f"tenc_grad_clip_norm = {cfg.tenc_grad_clip_norm:g} while the text encoder trains (stop_text_encoder "
               f"= {cfg.stop_text_encoder:g}): the text encoder's gradient norm is over all its gradients together, "
               "which never exist at once when each tensor is stepped inside the backward pass. Set "
               "tenc_grad_clip_norm to 0 (max_grad_norm then clips each text encoder tensor on its own, as it "
               "does the UNet's), or turn fused_backward_pass off", "tenc_grad_clip_norm")
    if cfg.optimizer not in FUSABLE_OPTIMIZERS:
        refuse(f"optimizer {cfg.optimizer} adapts its step from all parameters together: choose one of "
               f"{', '.join(FUSABLE_OPTIMIZERS)}, or turn fused_backward_pass off", "optimizer")


class FusedBackward:
    """Registers the per-tensor optimizer steps on every parameter of `optimizer` (the plain torch
    optimizer, not accelerate's wrapper); `remove()` takes them off again."""

    def __init__(self, optimizer, max_grad_norm: float):
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self._handles = [param.register_post_accumulate_grad_hook(self._step_hook(group))
                         for group in optimizer.param_groups for param in group["params"]]

    def _step_hook(self, group: dict):
        def step_this_tensor(param) -> None:
            self._step_one(group, param)
        return step_this_tensor

    def _step_one(self, group: dict, param) -> None:
        import torch

        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([param], self.max_grad_norm)
        optimizer = self.optimizer
        # The group itself (so what the optimizer writes into it persists, and the scheduler's lr is read),
        # narrowed to this one tensor while the optimizer steps it.
        all_groups, group_params = optimizer.param_groups, group["params"]
        optimizer.param_groups, group["params"] = [group], [param]
        try:
            optimizer.step()
        finally:
            optimizer.param_groups, group["params"] = all_groups, group_params
        param.grad = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
