"""Continue from the newest resume snapshot: weights, optimizer, scheduler, noise generator and counters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import TrainConfig
from ..errors import DreamboothError
from ..store import ModelDir


@dataclass
class ResumedCounters:
    seed: int
    global_step: int
    start_revision: int          # the revision this run's step 0 corresponds to
    epochs_done: int
    batches_done_in_epoch: int


def restore(model: ModelDir, cfg: TrainConfig, unet, text_encoder, ema, optimizer, lr_scheduler, generator,
            learning_rates: list[float], log: Callable[[str], None], adapters=None) -> ResumedCounters:
    """Load the newest snapshot into the given (plain, unwrapped) modules and training state;
    `learning_rates` are the [UNet, text encoder] rates this run trains at (scale_lr applied);
    `adapters`: the LoRA network of a use_lora run (its snapshots hold only the adapters)."""
    from .lora_run import restore_adapters
    from .snapshot import latest_snapshot, load_snapshot

    path = latest_snapshot(model.snapshots, model.older_snapshots)
    if path is None:
        raise DreamboothError(f"no snapshot to resume in {model.snapshots}: train without --resume")
    snap = load_snapshot(path)
    state = snap["state"]
    if not restore_adapters(adapters, snap["weights"], path.name):
        unet.load_state_dict(snap["weights"]["unet"])
    if "text_encoder" in snap["weights"]:
        from ..convert.diffusers_io import load_text_encoder_weights

        load_text_encoder_weights(text_encoder, snap["weights"]["text_encoder"])
    if ema is not None and "ema_unet" in snap["weights"]:
        ema.load_state_dict(snap["weights"]["ema_unet"], step_if_missing=state["global_step"])
    saved_with = state.get("optimizer", cfg.optimizer)
    if saved_with != cfg.optimizer:
        raise DreamboothError(
            f"snapshot {path.name} holds {saved_with} state, but optimizer is {cfg.optimizer}: set "
            f"optimizer back to {saved_with}, or train without --resume", field="optimizer")
    try:
        optimizer.load_state_dict(snap["optimizer"])
    except (ValueError, KeyError, RuntimeError) as error:
        raise DreamboothError(
            f"snapshot {path.name} was saved with other optimizer settings ({error}): use the optimizer and "
            "stop_text_encoder it was trained with, or train without --resume", field="optimizer") from None
    lr_scheduler.load_state_dict(snap["scheduler"])
    apply_configured_lr(learning_rates, optimizer, lr_scheduler, log)
    generator.set_state(snap["generator"])
    counters = ResumedCounters(seed=state["seed"], global_step=state["global_step"],
                               start_revision=state["revision"] - state["global_step"],
                               epochs_done=state["epochs_done"], batches_done_in_epoch=state["batches_done_in_epoch"])
    log(f"resumed from {path.name}: step {counters.global_step}, epoch {counters.epochs_done}")
    return counters


def apply_configured_lr(learning_rates: list[float], optimizer, lr_scheduler, log: Callable[[str], None]) -> None:
    """A resumed run trains at the learning rates db_config.json shows: the snapshot's optimizer and
    scheduler carry the old ones, so a changed value is applied (and said) instead of silently lost."""
    wanted = list(learning_rates)[:len(optimizer.param_groups)]
    saved = list(lr_scheduler.base_lrs)
    if all(abs(a - b) <= 1e-12 * max(abs(a), abs(b)) for a, b in zip(saved, wanted)):
        return
    names = ["learning_rate", "txt_learning_rate"]
    changes = [f"{names[i]} {old:g} -> {new:g}" for i, (old, new) in enumerate(zip(saved, wanted)) if old != new]
    lr_scheduler.base_lrs = list(wanted)
    factors = [fn(lr_scheduler.last_epoch) for fn in lr_scheduler.lr_lambdas]
    for group, base, factor in zip(optimizer.param_groups, wanted, factors):
        group["initial_lr"] = base
        group["lr"] = base * factor
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    log(f"resume: the snapshot trained with other learning rates; continuing with db_config.json's "
        f"({'; '.join(changes)})")
