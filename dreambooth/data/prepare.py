"""The trainer's data set-up: buckets, class images (generated when missing), bucket report, caches."""
from __future__ import annotations

from ..config import Concept
from .buckets import bucket_report, describe, size_step, write_bucket_counts
from .build import assign_buckets, build_training_set
from .class_images import generate_class_images, load_class_images, plan_class_images
from .dataset import TrainingSet


def prepare_training_set(trainer, concepts: list[Concept], pairs) -> TrainingSet:
    """Everything between the loaded models and the first step, for `Trainer._prepare`."""
    cfg, models, model, accelerator = trainer.cfg, trainer.models, trainer.model, trainer.accelerator
    log = trainer.log
    warn = lambda message: log(f"warning: {message}")  # noqa: E731
    items = [item for item, _ in pairs]
    step = size_step(models.vae, models.unet, cfg.resolution)
    assign_buckets(items, [image for _, image in pairs], cfg.resolution, step, cfg.enable_buckets)

    classes, owned = [], None
    if any(concept.num_class_images_per > 0 for concept in concepts):
        jobs = plan_class_images(concepts, items, model)
        if jobs and accelerator.is_main_process:
            _generate(trainer, concepts, jobs)
        accelerator.wait_for_everyone()
        classes, owned = load_class_images(concepts, items, model, warn)

    report = bucket_report([item.bucket for item in items], [item.bucket for item, _ in classes], cfg.resolution)
    log(describe(report))
    if accelerator.is_main_process:
        write_bucket_counts(model.path, report)
    return build_training_set(
        pairs, cfg.resolution, models.vae, models.text_encoder, models.tokenizer, trainer.device,
        clip_skip=cfg.clip_skip, classes=classes, owned=owned, cache_latents=cfg.cache_latents,
        cache_dir=model.cache if cfg.cache_latents_on_disk else None, enable_buckets=cfg.enable_buckets,
        step=step, hflip=cfg.hflip, shuffle_tags=cfg.shuffle_tags, keep_tags=cfg.keep_tags,
        cache_text=cfg.stop_text_encoder <= 0,  # the text encoder never trains: its outputs never change
        warn=warn, log=log)


def _generate(trainer, concepts: list[Concept], jobs) -> None:
    from ..sample import build_pipeline
    from ..train.setup import pick_seed
    from ..train.text import pipeline_clip_skip

    cfg, models, control = trainer.cfg, trainer.models, trainer.control
    control.update(state="generating class images")
    folders = sorted({str(job.path.parent) for job in jobs})
    trainer.log(f"generating {len(jobs)} class image(s) into {', '.join(folders)} "
                f"(batch {cfg.sample_batch_size})")
    pipeline = build_pipeline(models.unet, models.vae, models.text_encoder, models.tokenizer,
                              models.scheduler_config)
    with trainer.accelerator.autocast():
        generate_class_images(jobs, pipeline, concepts, cfg.sample_batch_size, pick_seed(cfg.seed),
                              pipeline_clip_skip(cfg.clip_skip), trainer.log,
                              canceled=control.cancel_requested.is_set)
    control.update(state="preparing")
