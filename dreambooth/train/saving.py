"""What a save and a preview write during training (main process only)."""
from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_dir


def save_training_state(trainer, want_checkpoint: bool, want_snapshot: bool) -> tuple[Path | None, Path | None]:
    """Update working/ with the trained weights, then write the checkpoint and snapshot asked for.

    working/ is always updated so that Generate Ckpt and the next run start from the latest weights.
    """
    from ..ckpt import export_checkpoint
    from .snapshot import save_snapshot

    unet = trainer.accelerator.unwrap_model(trainer.unet)
    with atomic_dir(trainer.model.working / "unet") as tmp:
        unet.save_pretrained(tmp)
    trainer.save_config()
    checkpoint = snapshot = None
    if want_checkpoint:
        modules = {"unet": unet, "vae": trainer.models.vae, "text_encoder": trainer.models.text_encoder}
        checkpoint = export_checkpoint(trainer.model, trainer.cfg, trainer.revision, modules)
        trainer.log(f"saved checkpoint {checkpoint}")
    if want_snapshot:
        snapshot = save_snapshot(trainer.model.checkpoints, trainer.revision, {"unet": unet}, trainer.optimizer,
                                 trainer.lr_scheduler, trainer.generator, trainer.snapshot_state(),
                                 trainer.cfg.snapshots_to_keep)
        trainer.log(f"saved resume snapshot {snapshot.name}")
    return checkpoint, snapshot


def write_previews(trainer) -> list[Path]:
    from ..sample import build_pipeline, generate_samples, sample_requests

    requests = sample_requests(trainer.concepts, trainer.first_captions)
    if not requests:
        return []
    models = trainer.models
    pipeline = build_pipeline(trainer.accelerator.unwrap_model(trainer.unet), models.vae, models.text_encoder,
                              models.tokenizer, models.scheduler_config)
    with trainer.accelerator.autocast():
        written = generate_samples(pipeline, requests, trainer.cfg.resolution, trainer.model.samples,
                                   str(trainer.revision), trainer.device)
    trainer.log(f"saved {len(written)} sample(s) at step {trainer.global_step}")
    return written
