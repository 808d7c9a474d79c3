"""The trainer's data set-up: buckets, class images (generated when missing), bucket report, caches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager

from ..config import Concept, TrainConfig
from ..model.long_prompts import prompt_layout
from ..store import ModelDir
from .buckets import bucket_report, describe, size_step, write_bucket_counts
from .build import assign_buckets, build_training_set
from .class_images import generate_class_images, load_class_images, plan_class_images
from .dataset import TrainingSet


@dataclass
class PreparationInputs:
    """What building the training set needs from the run, and nothing of the trainer itself."""
    cfg: TrainConfig
    model: ModelDir
    models: object                 # the loaded parts: unet, vae, text_encoder, tokenizer, scheduler_config
    device: object                 # torch.device the caches are built on
    class_image_seed: int          # seed for class images generated now
    is_main_process: bool          # only the main process generates class images and writes reports
    wait_for_everyone: Callable[[], None]
    autocast: Callable[[], ContextManager]
    log: Callable[[str], None]
    set_state: Callable[[str], None]   # the status line ("generating class images", "preparing")
    canceled: Callable[[], bool]
    progress: Callable[[str], None] = lambda text: None  # progress within the phase ("encoding images 3 of 8")


def prepare_training_set(inputs: PreparationInputs, concepts: list[Concept], pairs) -> TrainingSet:
    """Everything between the loaded models and the first step."""
    cfg, models, model = inputs.cfg, inputs.models, inputs.model
    log = inputs.log
    warn = lambda message: log(f"warning: {message}")  # noqa: E731
    items = [item for item, _ in pairs]
    step = size_step(models.vae, models.unet, cfg.resolution)
    assign_buckets(items, [image for _, image in pairs], cfg.resolution, step, cfg.enable_buckets)

    classes, owned = [], None
    if any(concept.num_class_images_per > 0 for concept in concepts):
        matching = not cfg.disable_class_matching
        jobs = plan_class_images(concepts, items, model, matching)
        if jobs and inputs.is_main_process:
            _generate(inputs, concepts, jobs)
        inputs.wait_for_everyone()
        classes, owned = load_class_images(concepts, items, model, warn, matching)

    report = bucket_report([item.bucket for item in items], [item.bucket for item, _ in classes], cfg.resolution)
    log(describe(report))
    if inputs.is_main_process:
        write_bucket_counts(model.path, report)
    return build_training_set(
        pairs, cfg.resolution, models.vae, models.text_encoder, models.tokenizer, inputs.device,
        clip_skip=cfg.clip_skip, classes=classes, owned=owned, cache_latents=cfg.cache_latents,
        cache_dir=model.cache if cfg.cache_latents_on_disk else None, enable_buckets=cfg.enable_buckets,
        step=step, hflip=cfg.hflip, shuffle_tags=cfg.shuffle_tags, keep_tags=cfg.keep_tags,
        cache_text=cfg.stop_text_encoder <= 0,  # the text encoder never trains: its outputs never change
        layout=prompt_layout(models.tokenizer, cfg), dynamic_norm=cfg.dynamic_img_norm,
        warn=warn, log=log, progress=inputs.progress)


def _generate(inputs: PreparationInputs, concepts: list[Concept], jobs) -> None:
    from ..model.sampling import build_pipeline, long_prompt_embeddings
    from ..model.text import pipeline_clip_skip

    cfg, models = inputs.cfg, inputs.models
    inputs.set_state("generating class images")
    folders = sorted({str(job.path.parent) for job in jobs})
    inputs.log(f"generating {len(jobs)} class image(s) into {', '.join(folders)} "
               f"(batch {cfg.sample_batch_size})")
    pipeline = build_pipeline(models.unet, models.vae, models.text_encoder, models.tokenizer,
                              models.scheduler_config, cfg.scheduler)
    with inputs.autocast():  # class prompts over 75 tokens in long-prompt windows, as the previews encode them
        long_prompts = long_prompt_embeddings(prompt_layout(models.tokenizer, cfg), models.text_encoder,
                                              cfg.clip_skip, inputs.device)
        generate_class_images(jobs, pipeline, concepts, cfg.sample_batch_size, inputs.class_image_seed,
                              pipeline_clip_skip(cfg.clip_skip), inputs.log, canceled=inputs.canceled,
                              progress=inputs.progress, long_prompts=long_prompts)
    inputs.set_state("preparing")
