"""What a save and a preview write during training (main process only)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..diskspace import tensor_bytes
from ..fsutil import atomic_dir


def save_training_state(trainer, want_checkpoint: bool, want_snapshot: bool) -> tuple[Path | None, Path | None]:
    """Update working/ with the trained weights, then write the checkpoint and snapshot asked for.

    working/ is always updated so that Generate Ckpt and the next run start from the latest weights.
    """
    from ..ckpt import export_checkpoint
    from ..convert.diffusers_io import save_text_encoder
    from .snapshot import save_snapshot

    unet = trainer.accelerator.unwrap_model(trainer.unet)
    text_encoder = trainer.models.text_encoder
    text_encoder_trained = trainer.text_encoder_epochs > 0
    with atomic_dir(trainer.model.working / "unet", need=tensor_bytes(unet.state_dict())) as tmp:
        unet.save_pretrained(tmp)
    if text_encoder_trained:
        with atomic_dir(trainer.model.working / "text_encoder") as tmp:
            save_text_encoder(tmp, text_encoder)
    trainer.save_config()
    checkpoint = snapshot = None
    if want_checkpoint:
        # frozen modules kept in the compute dtype are exported from working/ (their fp32 originals)
        cast = getattr(trainer, "frozen_cast", [])
        modules = {"unet": unet}
        if "vae" not in cast:
            modules["vae"] = trainer.models.vae
        if text_encoder_trained or "text_encoder" not in cast:
            modules["text_encoder"] = text_encoder
        checkpoint = export_checkpoint(trainer.model, trainer.cfg, trainer.revision, modules)
        trainer.log(f"saved checkpoint {checkpoint}")
        if trainer.ema is not None and trainer.cfg.save_ema:
            with trainer.ema.applied():
                ema_file = export_checkpoint(trainer.model, trainer.cfg, trainer.revision, modules, suffix="_ema")
            trainer.log(f"saved EMA checkpoint {ema_file}")
    if want_snapshot:
        trained = {"unet": unet}
        if text_encoder_trained:
            trained["text_encoder"] = text_encoder
        if trainer.ema is not None:
            trained["ema_unet"] = trainer.ema
        snapshot = save_snapshot(trainer.model.checkpoints, trainer.revision, trained, trainer.optimizer,
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
    use_ema = trainer.ema is not None and trainer.cfg.infer_ema
    with trainer.accelerator.autocast(), (trainer.ema.applied() if use_ema else contextlib.nullcontext()):
        written = generate_samples(pipeline, requests, trainer.cfg.resolution, trainer.model.samples,
                                   str(trainer.revision), trainer.device, clip_skip=trainer.cfg.clip_skip)
    trainer.log(f"saved {len(written)} sample(s) at step {trainer.global_step}" + (" (EMA weights)" if use_ema else ""))
    return written
