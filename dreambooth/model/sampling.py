"""Preview images from the model in memory (never reloaded from disk), saved with their prompt."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Concept
from ..platform.fsutil import atomic_path, atomic_write_text
from .long_prompts import CHUNK, WINDOW
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


def sanity_requests(sanity_prompt: str, sanity_seed: int, concepts: list[Concept]) -> list[SampleRequest]:
    """The sanity sample: one more preview with a fixed prompt and seed, so each preview is comparable (the
    first concept's steps and CFG)."""
    if not sanity_prompt.strip():
        return []
    first = concepts[0] if concepts else Concept()
    return [SampleRequest(sanity_prompt.strip(), first.save_sample_negative_prompt, sanity_seed,
                          first.save_infer_steps, first.save_guidance_scale)]


def _template_prompts(template: str) -> list[str]:
    path = Path(template).expanduser() if template.strip() else None
    if path is None or not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_sampler(name: str, scheduler_config: dict):
    """The diffusers scheduler `<name>Scheduler` (the `scheduler` setting) on the model's noise schedule."""
    import diffusers

    return getattr(diffusers, f"{name}Scheduler").from_config(scheduler_config)


def build_pipeline(unet, vae, text_encoder, tokenizer, scheduler_config: dict, sampler: str = "PNDM"):
    """A diffusers pipeline around the modules in memory: StableDiffusionXLPipeline for SDXL's
    DualTextEncoder + PairTokenizer, StableDiffusionPipeline otherwise; `sampler` is the `scheduler` setting."""
    from diffusers import StableDiffusionPipeline

    if getattr(text_encoder, "is_dual_text_encoder", False):
        from diffusers import StableDiffusionXLPipeline

        pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder.text_encoder, text_encoder_2=text_encoder.text_encoder_2,
            tokenizer=tokenizer.tokenizer, tokenizer_2=tokenizer.tokenizer_2, unet=unet,
            scheduler=make_sampler(sampler, scheduler_config), add_watermarker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=make_sampler(sampler, scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def step_reporter(progress: Callable[[str], None] | None, prefix: str, steps: int):
    """A diffusers `callback_on_step_end` that reports "<prefix>, step k of m" (None without `progress`)."""
    if progress is None:
        return None

    def on_step_end(pipeline, step, timestep, tensors):
        progress(f"{prefix}, step {step + 1} of {steps}")
        return tensors

    return on_step_end


def long_prompt_embeddings(layout, text_encoder, clip_skip: int, device):
    """A function (prompt, negative) -> (embeddings, negative embeddings) in long-prompt windows, both with the
    windows the longest of them needs (as the WebUI pads its prompt and negative prompt). `prompt` and
    `negative` may also be lists, one row each (a batch, as for class images); a single negative string then
    serves every prompt. None when the layout is CLIP's plain 75 tokens: the pipeline encodes those itself."""
    if layout is None or layout.paired or (layout.max_tokens <= CHUNK and not layout.strict):
        return None
    import torch

    from .text import encode_text

    def encode(prompt: str | list[str], negative: str | list[str]):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        ids, used = layout.tokenize(prompts + negatives)
        windows = -(-max(used) // WINDOW)
        with torch.no_grad():
            embeddings = encode_text(text_encoder, ids[:, :windows * WINDOW].to(device), clip_skip)
        return embeddings[:len(prompts)], embeddings[len(prompts):]
    return encode


def render_samples(pipeline, requests: list[SampleRequest], resolution: int, out_dir: Path, tag: str,
                   device, clip_skip: int = 1, long_prompts=None,
                   progress: Callable[[str], None] | None = None) -> list[Path]:
    """Render every request to `out_dir/sample_<tag>-<i>.png` with a `.txt` holding its settings.
    `long_prompts`: from long_prompt_embeddings, for captions over 75 tokens or strict tokens;
    `progress` hears "image i of n, step k of m"."""
    import torch

    written = []
    unet = pipeline.unet
    was_training = unet.training
    unet.eval()
    try:
        for i, request in enumerate(requests):
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            where = f"image {i + 1} of {len(requests)}"
            if progress is not None:
                progress(where)
            if long_prompts is not None:
                embeddings, negative = long_prompts(request.prompt, request.negative_prompt)
                text = dict(prompt_embeds=embeddings, negative_prompt_embeds=negative)
            else:
                text = dict(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                            clip_skip=pipeline_clip_skip(clip_skip))
            image = pipeline(**text, num_inference_steps=request.steps, guidance_scale=request.guidance,
                             height=resolution, width=resolution, generator=generator,
                             callback_on_step_end=step_reporter(progress, where, request.steps)).images[0]
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


def sample_caption(path: Path) -> str:
    """"step 12: a photo of sks toy" from sample_<revision>[-manual]-<i>.png and the prompt in its .txt."""
    tag = path.stem[len("sample_"):].rsplit("-", 1)[0] if path.stem.startswith("sample_") else path.stem
    manual = tag.endswith("-manual")
    step = tag[:-len("-manual")] if manual else tag
    text = path.with_suffix(".txt")
    prompt = text.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip() if text.is_file() else ""
    where = f"step {step}" + (" (Generate Samples)" if manual else "")
    return f"{where}: {prompt}" if prompt else where


def list_samples(folder: Path, limit: int = 200) -> list[tuple[Path, str]]:
    """Every preview in `folder` with its caption, newest first (the newest `limit` of them)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("sample_*.png"):
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:  # removed meanwhile
            continue
    found.sort(key=lambda item: (item[0], item[1].name), reverse=True)
    return [(path, sample_caption(path)) for _, path in found[:limit]]
