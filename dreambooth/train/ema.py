"""Exponential moving average of the trained UNet's weights.

After every optimizer step: ema = decay * ema + (1 - decay) * weights. Kept in fp32 on the device or in
system RAM (`on_cpu`), saved in snapshots, and swapped in for samples when asked.
"""
from __future__ import annotations

import contextlib


class EMA:
    def __init__(self, module, decay: float, on_cpu: bool = False):
        import torch

        self.decay = decay
        self.device = torch.device("cpu") if on_cpu else None
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().to(self.device or p.device, dtype=torch.float32, copy=True) for p in self.params]

    def update(self) -> None:
        import torch

        with torch.no_grad():
            current = [p.detach().to(s.device, dtype=torch.float32) for p, s in zip(self.params, self.shadow)]
            torch._foreach_mul_(self.shadow, self.decay)
            torch._foreach_add_(self.shadow, current, alpha=1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily put the EMA weights into the module (for samples or export), then restore."""
        import torch

        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow):
                param.copy_(shadow.to(param.device, dtype=param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, backup):
                    param.copy_(saved)

    def state_dict(self) -> dict:
        return {f"{i}": s.detach().cpu() for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        import torch

        with torch.no_grad():
            for i, shadow in enumerate(self.shadow):
                shadow.copy_(state[f"{i}"].to(shadow.device))
