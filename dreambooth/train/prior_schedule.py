"""Prior-loss annealing (prior_loss_scale): the prior-preservation weight at each point of the run.

As in the older extension, the weight falls linearly from prior_loss_weight to prior_loss_weight_min over
the first prior_loss_target epochs and stays at the minimum afterwards; here it moves at every step
(epochs done as a fraction), not once per epoch.
"""
from __future__ import annotations

from ..config import TrainConfig


def prior_weight(cfg: TrainConfig, epochs_done: float) -> float:
    if not cfg.prior_loss_scale:
        return cfg.prior_loss_weight
    if epochs_done >= cfg.prior_loss_target:
        return cfg.prior_loss_weight_min
    done = epochs_done / cfg.prior_loss_target
    return cfg.prior_loss_weight * (1.0 - done) + cfg.prior_loss_weight_min * done
