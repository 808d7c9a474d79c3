"""The interval plan: how many optimizer steps a run has, and after which of them to save or preview.

A step is one optimizer update. An epoch shows every training item once, so
steps per epoch = ceil(ceil(items / batch) / gradient accumulation). Saves and previews happen at the
end of every N-th epoch (N = 0: only at the end) and always after the last step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainPlan:
    items: int
    batch_size: int
    accumulation: int
    epochs: int
    save_every: int
    preview_every: int
    pause_every: int = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.items / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulation)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def _due(self, epoch: int, every: int) -> bool:
        return epoch == self.epochs or (every > 0 and epoch % every == 0)

    def saves_after(self, epoch: int) -> bool:
        """Whether a checkpoint and snapshot are written when `epoch` (1-based) ends."""
        return self._due(epoch, self.save_every)

    def previews_after(self, epoch: int) -> bool:
        return self._due(epoch, self.preview_every)

    def pauses_after(self, epoch: int) -> bool:
        return self.pause_every > 0 and epoch % self.pause_every == 0 and epoch < self.epochs

    def save_steps(self) -> list[int]:
        return [e * self.steps_per_epoch for e in range(1, self.epochs + 1) if self.saves_after(e)]

    def preview_steps(self) -> list[int]:
        return [e * self.steps_per_epoch for e in range(1, self.epochs + 1) if self.previews_after(e)]


def plan_from_config(cfg, items: int) -> TrainPlan:
    return TrainPlan(
        items=items,
        batch_size=cfg.train_batch_size,
        accumulation=cfg.gradient_accumulation_steps,
        epochs=cfg.num_train_epochs,
        save_every=cfg.save_embedding_every,
        preview_every=cfg.save_preview_every,
        pause_every=cfg.epoch_pause_frequency,
    )
