"""`freeze_spectral_norm`: every UNet linear and conv weight keeps the spectral norm (largest singular
value) it started with.

The older extension reparametrized the weights (σReparam, Zhai et al. 2023, arXiv 2303.06296, with σ
frozen at its start value). Here the same constraint is kept by projection: after each optimizer step a
weight is rescaled by σ₀ / σ(W), with σ(W) from one power-iteration step per weight (warm-started, so it
tracks the slowly changing weight). The weights stay plain tensors, so saving, EMA, snapshots and the
optimizer's references are untouched.
"""
from __future__ import annotations

WARM_UP_ITERATIONS = 100  # power iterations for each weight's first estimate


def start_spectral_freeze(cfg, unet, log) -> SpectralNormFreeze | None:
    """freeze_spectral_norm's projection when it is on and the UNet trains (None otherwise)."""
    if not (cfg.freeze_spectral_norm and cfg.train_unet):
        return None
    spectral = SpectralNormFreeze(unet)
    log(f"freeze_spectral_norm: {len(spectral)} UNet weights keep their spectral norm")
    return spectral


class SpectralNormFreeze:
    def __init__(self, module):
        import torch

        self.entries = []  # (weight, u, v, σ₀)
        with torch.no_grad():
            for layer in module.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and layer.weight.requires_grad:
                    matrix = layer.weight.detach().flatten(1).float()
                    generator = torch.Generator(device="cpu").manual_seed(len(self.entries))
                    u = torch.randn(matrix.shape[0], generator=generator).to(matrix.device)
                    u, v = _power(matrix, u / u.norm(), WARM_UP_ITERATIONS)
                    self.entries.append((layer.weight, u, v, _sigma(matrix, u, v)))

    def __len__(self) -> int:
        return len(self.entries)

    def apply(self) -> None:
        """One power-iteration step per weight, then its rescale to σ₀."""
        import torch

        with torch.no_grad():
            for n, (weight, u, v, sigma0) in enumerate(self.entries):
                matrix = weight.detach().flatten(1).float()
                u, v = _power(matrix, u, 1)
                weight.mul_((sigma0 / _sigma(matrix, u, v)).to(weight.dtype))
                self.entries[n] = (weight, u, v, sigma0)


def _power(matrix, u, iterations: int):
    import torch.nn.functional as F

    for _ in range(iterations):
        v = F.normalize(matrix.t() @ u, dim=0)
        u = F.normalize(matrix @ v, dim=0)
    return u, v


def _sigma(matrix, u, v):
    return (u @ (matrix @ v)).clamp(min=1e-12)
