"""What a save and a preview write during training (main process only)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from ..config import Concept, TrainConfig
from ..platform.diskspace import tensor_bytes
from ..platform.fsutil import atomic_dir
from ..store import ModelDir


@dataclass
class SaveInputs:
    """The trained state at one step, as a save needs it."""
    model: ModelDir
    cfg: TrainConfig
    revision: int
    unet: object                   # the plain module (unwrapped from accelerate)
    vae: object
    text_encoder: object
    text_encoder_trained: bool     # this run trains (or trained) the text encoder
    frozen_cast: list[str]         # frozen modules held in the compute dtype: exported from working/ instead
    ema: object | None             # train.ema.EMA
    optimizer: object
    lr_scheduler: object
    generator: object
    resume_state: dict             # the counters a snapshot needs to continue exactly
    save_config: Callable[[], None]
    log: Callable[[str], None]
    progress: Callable[[str], None] = lambda text: None  # what is being written now (the status line)
    lora: object | None = None     # train.lora_run.LoraRun: the save writes the LoRA file, not a checkpoint
    half: bool | None = None       # Generate Ckpt's on-screen Half / subdirectory for its save (None: the params)
    subdir: bool | None = None


@dataclass
class PreviewInputs:
    """What the preview images at one step are made from."""
    model: ModelDir
    cfg: TrainConfig
    concepts: list[Concept]
    first_captions: dict[int, str]  # each concept's first caption: the default sample prompt
    unet: object                    # the plain module
    models: object                  # vae, text_encoder, tokenizer, scheduler_config
    ema: object | None
    revision: int
    step: int
    device: object
    autocast: Callable[[], ContextManager]
    log: Callable[[str], None]
    progress: Callable[[str], None] = lambda text: None  # "image i of n, step k of m" (the status line)


def first_captions(items) -> dict[int, str]:
    """Each concept's first caption: the default sample prompt of its previews."""
    captions = {}
    for item in items:
        captions.setdefault(item.concept, item.caption)
    return captions


class WrittenAt:
    """What was saved at one revision, so that nothing is written twice there: a Cancel right after an
    epoch's save (the same step) must not write the same checkpoint and snapshot again. The same on every
    process (only the main one writes), so all of them skip the same saves."""

    def __init__(self):
        self.revision, self.kinds = -1, set()

    def _done(self, revision: int) -> set[str]:
        return self.kinds if self.revision == revision else set()

    def wanted(self, revision: int, cfg: TrainConfig, reason: str,
               requested: dict | None) -> tuple[bool, bool] | None:
        """(checkpoint, snapshot) a save for `reason` ("during", "after", "cancel") writes at `revision`;
        None when all of it was written there already. `requested` (Generate Ckpt) always gets its checkpoint."""
        done = self._done(revision)
        want_ckpt = requested is not None or (getattr(cfg, f"save_ckpt_{reason}") and "checkpoint" not in done)
        want_state = getattr(cfg, f"save_state_{reason}") and "snapshot" not in done
        if done and not (want_ckpt or want_state):
            return None
        return want_ckpt, want_state

    def record(self, revision: int, checkpoint: bool, snapshot: bool) -> None:
        saved = {name for name, wanted in (("checkpoint", checkpoint), ("snapshot", snapshot)) if wanted}
        self.revision, self.kinds = revision, self._done(revision) | saved | {"working"}


def save_training_state(state: SaveInputs, want_checkpoint: bool, want_snapshot: bool) -> tuple[Path | None, Path | None]:
    """Update working/ with the trained weights, then write the checkpoint and snapshot asked for.

    working/ is always updated so that Generate Ckpt and the next run start from the latest weights.
    """
    from ..convert.diffusers_io import write_text_encoders
    from ..model.publish import export_checkpoint
    from .snapshot import save_snapshot

    if state.lora is not None:  # working/ keeps the base; the LoRA file is this run's checkpoint
        from .lora_run import save_lora_state

        return save_lora_state(state, want_checkpoint, want_snapshot)
    model, cfg, unet, text_encoder = state.model, state.cfg, state.unet, state.text_encoder
    state.progress("writing working weights")
    with atomic_dir(model.working / "unet", need=tensor_bytes(unet.state_dict())) as tmp:
        unet.save_pretrained(tmp)
    if state.text_encoder_trained:
        write_text_encoders(model.working, text_encoder)
    state.save_config()
    checkpoint = snapshot = None
    if want_checkpoint:
        # frozen modules kept in the compute dtype are exported from working/ (their fp32 originals)
        modules = {"unet": unet}
        if "vae" not in state.frozen_cast:
            modules["vae"] = state.vae
        if state.text_encoder_trained or "text_encoder" not in state.frozen_cast:
            modules["text_encoder"] = text_encoder
        state.progress("writing checkpoint")
        checkpoint = export_checkpoint(model, cfg, state.revision, modules, state.half, state.subdir)
        state.log(f"saved checkpoint {checkpoint}")
        if state.ema is not None and cfg.save_ema:
            state.progress("writing EMA checkpoint")
            with state.ema.applied():
                ema_file = export_checkpoint(model, cfg, state.revision, modules, state.half, state.subdir,
                                             suffix="_ema")
            state.log(f"saved EMA checkpoint {ema_file}")
    if want_snapshot:
        trained = {"unet": unet}
        if state.text_encoder_trained:
            trained["text_encoder"] = text_encoder
        if state.ema is not None:
            trained["ema_unet"] = state.ema
        state.progress("writing resume snapshot")
        snapshot = save_snapshot(model.snapshots, state.revision, trained, state.optimizer, state.lr_scheduler,
                                 state.generator, state.resume_state, cfg.snapshots_to_keep,
                                 older_folders=(model.older_snapshots,))
        state.log(f"saved resume snapshot {snapshot.name}")
    return checkpoint, snapshot


def write_previews(preview: PreviewInputs) -> list[Path]:
    from ..model.long_prompts import prompt_layout
    from ..model.sampling import (build_pipeline, long_prompt_embeddings, render_samples, sample_requests,
                                  sanity_requests)

    models, cfg = preview.models, preview.cfg
    requests = sample_requests(preview.concepts, preview.first_captions) + sanity_requests(
        cfg.sanity_prompt, cfg.sanity_seed, preview.concepts)
    if not requests:
        return []
    pipeline = build_pipeline(preview.unet, models.vae, models.text_encoder, models.tokenizer,
                              models.scheduler_config, cfg.scheduler)
    use_ema = preview.ema is not None and cfg.infer_ema
    with preview.autocast(), (preview.ema.applied() if use_ema else contextlib.nullcontext()):
        long_prompts = long_prompt_embeddings(prompt_layout(models.tokenizer, cfg), models.text_encoder,
                                              cfg.clip_skip, preview.device)
        written = render_samples(pipeline, requests, cfg.resolution, preview.model.samples, str(preview.revision),
                                 preview.device, clip_skip=cfg.clip_skip, long_prompts=long_prompts,
                                 progress=preview.progress)
    preview.log(f"saved {len(written)} sample(s) at step {preview.step}" + (" (EMA weights)" if use_ema else ""))
    return written
