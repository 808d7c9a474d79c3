"""The interval plan: how many optimizer steps a run has, and after which of them to save or preview.

A step is one optimizer update. An epoch shows every training item once, so
steps per epoch = ceil(ceil(items / batch) / gradient accumulation), divided (rounded up) among the
processes under `accelerate launch`. Saves and previews happen at the
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
    processes: int = 1  # data-parallel processes (accelerate launch): each takes its share of the groups
    save_every_steps: int = 0  # > 0: save by steps instead of epochs
    preview_every_steps: int = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.items / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(self.batches_per_epoch / self.accumulation) / self.processes)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def _due(self, epoch: int, every: int, every_steps: int) -> bool:
        return epoch == self.epochs or (every_steps == 0 and every > 0 and epoch % every == 0)

    def saves_after(self, epoch: int) -> bool:
        """Whether a checkpoint and snapshot are written when `epoch` (1-based) ends."""
        return self._due(epoch, self.save_every, self.save_every_steps)

    def previews_after(self, epoch: int) -> bool:
        return self._due(epoch, self.preview_every, self.preview_every_steps)

    def saves_at_step(self, step: int) -> bool:
        """Step-based saves (save_every_steps); the last step is saved by the end of its epoch."""
        return self.save_every_steps > 0 and step % self.save_every_steps == 0 and step < self.total_steps

    def previews_at_step(self, step: int) -> bool:
        return self.preview_every_steps > 0 and step % self.preview_every_steps == 0 and step < self.total_steps

    def pauses_after(self, epoch: int) -> bool:
        return self.pause_every > 0 and epoch % self.pause_every == 0 and epoch < self.epochs

    def save_steps(self) -> list[int]:
        by_epoch = {e * self.steps_per_epoch for e in range(1, self.epochs + 1) if self.saves_after(e)}
        by_step = {s for s in range(1, self.total_steps + 1) if self.saves_at_step(s)}
        return sorted(by_epoch | by_step)

    def preview_steps(self) -> list[int]:
        by_epoch = {e * self.steps_per_epoch for e in range(1, self.epochs + 1) if self.previews_after(e)}
        by_step = {s for s in range(1, self.total_steps + 1) if self.previews_at_step(s)}
        return sorted(by_epoch | by_step)


def shard_groups(groups: list, processes: int, rank: int) -> list:
    """This process's share of an epoch's step groups: every `processes`-th one, starting at `rank`.

    Every process gets the same number (ceil(len / processes)); the last round wraps around to the
    epoch's first groups, so data-parallel processes always make the same number of optimizer steps.
    """
    if processes <= 1 or not groups:
        return list(groups)
    steps = math.ceil(len(groups) / processes)
    return [groups[(step * processes + rank) % len(groups)] for step in range(steps)]


def plan_from_config(cfg, items: int, processes: int = 1) -> TrainPlan:
    return TrainPlan(
        items=items,
        batch_size=cfg.train_batch_size,
        accumulation=cfg.gradient_accumulation_steps,
        epochs=cfg.num_train_epochs,
        save_every=cfg.save_embedding_every,
        preview_every=cfg.save_preview_every,
        pause_every=cfg.epoch_pause_frequency,
        processes=processes,
        save_every_steps=cfg.save_every_steps,
        preview_every_steps=cfg.preview_every_steps,
    )
