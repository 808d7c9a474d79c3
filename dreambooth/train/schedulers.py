"""The nine learning-rate schedules, as multipliers of the base learning rate per optimizer step.

Pure functions of the step, so they are table-tested and resume exactly (LambdaLR keeps only the step).
Every schedule but `constant` starts with `lr_warmup_steps` of linear warm-up from 0.
  linear                          lr -> lr*lr_factor, reached at lr_scale_pos of the run, then held
  linear_with_warmup              lr -> 0 at the end
  cosine                          half a cosine, lr -> 0
  cosine_with_restarts            `lr_cycles` cosine cycles lr -> 0, each restarting at lr
  cosine_annealing                half a cosine, lr -> learning_rate_min
  cosine_annealing_with_restarts  `lr_cycles` cycles lr -> learning_rate_min
  polynomial                      (1 - progress)^lr_power, lr -> learning_rate_min
  constant                        lr (warm-up ignored)
  constant_with_warmup            lr after warm-up
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from ..registry import LR_SCHEDULERS


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    total_steps: int
    warmup_steps: int = 0
    cycles: int = 1
    power: float = 1.0
    min_ratio: float = 0.0  # learning_rate_min / learning_rate
    factor: float = 0.5
    scale_pos: float = 0.5


def lr_multiplier(spec: ScheduleSpec, step: int) -> float:
    """Multiplier for the learning rate used by optimizer step `step` (0-based)."""
    if spec.name not in LR_SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {spec.name!r}")
    if spec.name == "constant":
        return 1.0
    warmup = min(spec.warmup_steps, spec.total_steps)
    if step < warmup:
        return step / warmup
    if spec.name == "constant_with_warmup":
        return 1.0
    span = max(1, spec.total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = min(1.0, max(0.0, spec.min_ratio))
    if spec.name == "linear":
        reach = min(1.0, progress / spec.scale_pos)
        return 1.0 + (spec.factor - 1.0) * reach
    if spec.name == "linear_with_warmup":
        return 1.0 - progress
    if spec.name in ("cosine", "cosine_annealing"):
        low = 0.0 if spec.name == "cosine" else floor
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if spec.name in ("cosine_with_restarts", "cosine_annealing_with_restarts"):
        if progress >= 1.0:
            return 0.0 if spec.name == "cosine_with_restarts" else floor
        low = 0.0 if spec.name == "cosine_with_restarts" else floor
        cycle_progress = (progress * spec.cycles) % 1.0
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * cycle_progress))
    # polynomial
    return floor + (1.0 - floor) * (1.0 - progress) ** spec.power


def learning_rate_factor(cfg, processes: int) -> int:
    """scale_lr's multiplier: images per optimizer step (1 when scale_lr is off)."""
    return cfg.train_batch_size * cfg.gradient_accumulation_steps * processes if cfg.scale_lr else 1


def learning_rates(cfg, processes: int) -> list[float]:
    """[UNet, text encoder] learning rates as the optimizer gets them."""
    factor = learning_rate_factor(cfg, processes)
    if cfg.use_lora:
        return [cfg.lora_learning_rate * factor, cfg.lora_txt_learning_rate * factor]
    return [cfg.learning_rate * factor, cfg.txt_learning_rate * factor]


def spec_from_config(cfg, total_steps: int) -> ScheduleSpec:
    return ScheduleSpec(
        name=cfg.lr_scheduler,
        total_steps=total_steps,
        warmup_steps=cfg.lr_warmup_steps,
        cycles=cfg.lr_cycles,
        power=cfg.lr_power,
        min_ratio=cfg.learning_rate_min / (cfg.lora_learning_rate if cfg.use_lora else cfg.learning_rate),
        factor=cfg.lr_factor,
        scale_pos=cfg.lr_scale_pos,
    )


def build_lr_scheduler(optimizer, spec: ScheduleSpec):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_multiplier, spec))
