"""Preview images from the model in memory (never reloaded from disk), saved with their prompt."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..config import Concept
from ..platform.fsutil import atomic_path, atomic_write_text
from .text import pipeline_clip_skip


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float


def sample_requests(concepts: list[Concept], first_captions: dict[int, str]) -> list[SampleRequest]:
    """What each concept asks to preview: its sample prompt (or template lines, or first caption)."""
    requests = []
    for index, concept in enumerate(concepts):
        prompts = _template_prompts(concept.save_sample_template) or [
            concept.save_sample_prompt.strip() or first_captions.get(index, "")]
        for n in range(concept.n_save_sample):
            seed = concept.sample_seed if concept.sample_seed >= 0 else random.randrange(2**31)
            requests.append(SampleRequest(prompts[n % len(prompts)], concept.save_sample_negative_prompt,
                                          seed + n if concept.sample_seed >= 0 else seed,
                                          concept.save_infer_steps, concept.save_guidance_scale))
    return requests


def _template_prompts(template: str) -> list[str]:
    path = Path(template).expanduser() if template.strip() else None
    if path is None or not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_pipeline(unet, vae, text_encoder, tokenizer, scheduler_config: dict):
    """A diffusers pipeline around the modules in memory: StableDiffusionXLPipeline for SDXL's
    DualTextEncoder + PairTokenizer, StableDiffusionPipeline otherwise."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    if getattr(text_encoder, "is_dual_text_encoder", False):
        from diffusers import StableDiffusionXLPipeline

        pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder.text_encoder, text_encoder_2=text_encoder.text_encoder_2,
            tokenizer=tokenizer.tokenizer, tokenizer_2=tokenizer.tokenizer_2, unet=unet,
            scheduler=PNDMScheduler.from_config(scheduler_config), add_watermarker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render_samples(pipeline, requests: list[SampleRequest], resolution: int, out_dir: Path, tag: str,
                     device, clip_skip: int = 1) -> list[Path]:
    """Render every request to `out_dir/sample_<tag>-<i>.png` with a `.txt` holding its settings."""
    import torch

    written = []
    unet = pipeline.unet
    was_training = unet.training
    unet.eval()
    try:
        for i, request in enumerate(requests):
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            image = pipeline(request.prompt, negative_prompt=request.negative_prompt or None,
                             num_inference_steps=request.steps, guidance_scale=request.guidance,
                             height=resolution, width=resolution, generator=generator,
                             clip_skip=pipeline_clip_skip(clip_skip)).images[0]
            path = out_dir / f"sample_{tag}-{i}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            atomic_write_text(path.with_suffix(".txt"),
                              f"{request.prompt}\nNegative prompt: {request.negative_prompt}\n"
                              f"Steps: {request.steps}, CFG scale: {request.guidance}, Seed: {request.seed}, "
                              f"Size: {resolution}x{resolution}\n")
            written.append(path)
    finally:
        unet.train(was_training)
    return written
