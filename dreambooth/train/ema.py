"""Exponential moving average of the trained UNet's weights, with diffusers' `EMAModel` semantics.

At optimizer step n (1-based): ema = d * ema + (1 - d) * weights, with the warm-up decay diffusers uses
  d(n) = min(decay, (1 + s) / (10 + s)),  s = n - 1   (and d = 0 at n = 1: the EMA starts at the weights)
so a run of a few thousand steps is not stuck near its starting weights: at the default 0.9999 and no
warm-up, 0.9999^2000 = 82% of the starting weights would remain after 2,000 steps; with the warm-up the
decay reaches 0.9999 only after ~90,000 steps and the start is forgotten within the first hundred.

`update_every` N > 1 updates every N-th step with the decay compounded over the skipped steps (d^N),
which keeps the same time constant. With the EMA in system RAM (`on_cpu`) this is what keeps the loop
from copying the whole UNet to the host at every step.

Weights for samples and exports are swapped in and back (`applied`), as diffusers' store / copy_to /
restore do: no second copy of the UNet is ever allocated on the GPU.
"""
from __future__ import annotations

import contextlib

CPU_UPDATE_EVERY = 10  # automatic interval with the EMA in RAM: one host copy per 10 steps


def warmup_decay(step: int, decay: float) -> float:
    """diffusers' EMAModel.get_decay for optimization step `step` (1-based), update_after_step 0."""
    s = step - 1
    if s <= 0:
        return 0.0
    return min(decay, (1 + s) / (10 + s))


def resolve_update_every(requested: int, on_cpu: bool, device) -> int:
    """0 = automatic: every step with the EMA beside the weights, every CPU_UPDATE_EVERY steps when the
    weights live on an accelerator and the EMA in RAM."""
    if requested > 0:
        return requested
    off_device = on_cpu and getattr(device, "type", str(device)) != "cpu"
    return CPU_UPDATE_EVERY if off_device else 1


def start_ema(cfg, unet, device, log) -> EMA | None:
    """The run's EMA of the UNet when use_ema asks for one."""
    if not cfg.use_ema:
        return None
    every = resolve_update_every(cfg.ema_update_every, cfg.ema_on_cpu, device)
    ema = EMA(unet, cfg.ema_decay, cfg.ema_on_cpu, every)
    log(f"EMA of the UNet: decay up to {cfg.ema_decay:g} with warm-up, updated every {every} step(s)"
        + (", kept in RAM" if cfg.ema_on_cpu else ""))
    return ema


class EMA:
    def __init__(self, module, decay: float, on_cpu: bool = False, update_every: int = 1):
        import torch

        self.decay = decay
        self.update_every = max(1, update_every)
        self.device = torch.device("cpu") if on_cpu else None
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().to(self.device or p.device, dtype=torch.float32, copy=True) for p in self.params]
        self.optimization_step = 0  # steps seen, like EMAModel.optimization_step
        self._last_update = 0

    def current_decay(self) -> float:
        return warmup_decay(self.optimization_step, self.decay)

    def step(self) -> bool:
        """Count one optimizer step; update when the interval is due. True when it updated."""
        self.optimization_step += 1
        if self.optimization_step != 1 and self.optimization_step % self.update_every:
            return False
        # the decays of every step since the last update, compounded (exactly d^N once warm-up is over)
        keep = 1.0
        for n in range(self._last_update + 1, self.optimization_step + 1):
            keep *= warmup_decay(n, self.decay)
        self._last_update = self.optimization_step
        self._blend(keep)
        return True

    def update(self) -> None:  # the loop's name for step()
        self.step()

    def _blend(self, keep: float) -> None:
        import torch

        with torch.no_grad():
            current = [p.detach().to(s.device, dtype=torch.float32) for p, s in zip(self.params, self.shadow)]
            if keep == 0.0:  # the first step: the EMA starts at the weights
                for shadow, value in zip(self.shadow, current):
                    shadow.copy_(value)
                return
            torch._foreach_mul_(self.shadow, keep)
            torch._foreach_add_(self.shadow, current, alpha=1.0 - keep)

    @contextlib.contextmanager
    def applied(self, backup_device="cpu"):
        """The EMA weights in the module for the block, the trained ones back afterwards.

        Where a shadow tensor has the parameter's device and dtype the two are swapped (nothing copied);
        otherwise the trained weights are stored on `backup_device` (RAM) while the EMA is copied in."""
        import torch

        swapped, stored = [], []
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow):
                if shadow.device == param.device and shadow.dtype == param.dtype:
                    param.data, shadow.data = shadow.data, param.data
                    swapped.append((param, shadow))
                else:
                    stored.append((param, param.detach().to(backup_device, copy=True)))
                    param.copy_(shadow.to(param.device, dtype=param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for param, shadow in swapped:
                    param.data, shadow.data = shadow.data, param.data
                for param, saved in stored:
                    param.copy_(saved.to(param.device))

    def state_dict(self) -> dict:
        import torch

        state = {f"{i}": s.detach().cpu() for i, s in enumerate(self.shadow)}
        state["optimization_step"] = torch.tensor(self.optimization_step, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict, step_if_missing: int = 0) -> None:
        import torch

        with torch.no_grad():
            for i, shadow in enumerate(self.shadow):
                shadow.copy_(state[f"{i}"].to(shadow.device))
        stored = state.get("optimization_step")
        self.optimization_step = int(stored.item()) if stored is not None else step_if_missing
        self._last_update = self.optimization_step - self.optimization_step % self.update_every
