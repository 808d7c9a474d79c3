"""Class images for prior preservation: what each concept needs, generating the missing ones, pairing.

A concept with num_class_images_per = k and n instance images needs k*n class images in its class folder
(`class_data_dir`, else the model's `classifiers_<i>/`). Images already there count, so a second run
generates none. Missing image number i is made for the instance image it will be paired with
(I_{i mod n}, see `dataset`): at that instance's bucket size, with the class prompt whose `[filewords]`
are the instance's words without the instance token. Each PNG gets a `.txt` holding those words (the whole
prompt for the default class prompt `[filewords]`), so the class caption at training time is the
generation prompt again. Generation uses the model being trained, batched by `sample_batch_size`; a class
prompt over 75 tokens is encoded in the previews' long-prompt windows (max_token_length, strict_tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Concept
from ..errors import DreamboothError
from ..platform.fsutil import atomic_path, atomic_write_text
from .captions import FILEWORDS, build_caption, class_words
from .dataset import TrainItem
from .images import IMAGE_SUFFIXES, ImageInfo, probe_all


@dataclass
class ClassJob:
    concept: int
    number: int  # the class image's number within its concept
    path: Path
    words: str  # written to the .txt
    prompt: str
    size: tuple[int, int]  # (width, height)


def class_folder(concept: Concept, index: int, model) -> Path:
    return Path(concept.class_data_dir).expanduser() if str(concept.class_data_dir).strip() else model.classifiers(index)


def existing_class_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _concept_items(items: list[TrainItem], index: int) -> list[int]:
    return [n for n, item in enumerate(items) if item.concept == index and not item.is_class]


def fill_prompt(class_prompt: str, words: str) -> str:
    template = class_prompt or FILEWORDS
    return " ".join(template.replace(FILEWORDS, words).replace(" ,", ",").split())


def plan_class_images(concepts: list[Concept], items: list[TrainItem], model,
                      matching: bool = True) -> list[ClassJob]:
    """The class images still missing, each for the instance image it will be paired with. None without
    `matching` (disable_class_matching): the class folder is used as it is."""
    jobs = []
    for index, concept in enumerate(concepts):
        if concept.num_class_images_per <= 0 or not matching:
            continue
        owners = _concept_items(items, index)
        needed = concept.num_class_images_per * len(owners)
        folder = class_folder(concept, index, model)
        have = len(existing_class_images(folder))
        taken = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        for number in range(have, needed):
            owner = items[owners[number % len(owners)]]
            words = class_words(concept.class_prompt, owner.path, concept.instance_token)
            prompt = fill_prompt(concept.class_prompt, words)
            if not prompt:
                raise DreamboothError(
                    f"concepts_list[{index}].class_prompt is empty for {owner.path.name}: set a class prompt "
                    "such as 'a photo of a person'", field=f"concepts_list[{index}].class_prompt")
            name, bump = f"class_{number:05d}", 0
            while f"{name}.png" in taken:
                bump += 1
                name = f"class_{number:05d}_{bump}"
            taken.add(f"{name}.png")
            jobs.append(ClassJob(index, number, folder / f"{name}.png", words, prompt, owner.bucket))
    return jobs


def generate_class_images(jobs: list[ClassJob], pipeline, concepts: list[Concept], batch_size: int, seed: int,
                          clip_skip: int | None, log: Callable[[str], None],
                          canceled: Callable[[], bool] = lambda: False,
                          progress: Callable[[str], None] | None = None, long_prompts=None) -> int:
    """Render the jobs in batches of `batch_size` (one size and concept per batch); returns how many were
    written. Image number i of a concept uses seed `seed + i`. `progress` hears "class images i-j of n,
    step k of m". `long_prompts` (sampling.long_prompt_embeddings, as for previews) encodes the class prompts
    in long-prompt windows, for max_token_length over 75 or strict tokens; without it the pipeline encodes
    them in CLIP's one 77-token window."""
    import torch

    from ..model.sampling import step_reporter

    unet = pipeline.unet
    was_training = unet.training
    unet.eval()
    done = 0
    try:
        for chunk in _chunks(jobs, batch_size):
            if canceled():
                log(f"class image generation canceled after {done} of {len(jobs)}")
                break
            concept = concepts[chunk[0].concept]
            width, height = chunk[0].size
            negative = concept.class_negative_prompt.strip()
            where = f"class image {done + 1}" + (f"-{done + len(chunk)}" if len(chunk) > 1 else "") + f" of {len(jobs)}"
            if progress is not None:
                progress(where)
            prompts = [job.prompt for job in chunk]
            if long_prompts is not None:
                embeddings, negatives = long_prompts(prompts, negative)
                text = dict(prompt_embeds=embeddings, negative_prompt_embeds=negatives)
            else:
                text = dict(prompt=prompts, negative_prompt=[negative] * len(chunk) if negative else None,
                            clip_skip=clip_skip)
            images = pipeline(**text, num_inference_steps=concept.class_infer_steps,
                              guidance_scale=concept.class_guidance_scale, height=height, width=width,
                              generator=[torch.Generator("cpu").manual_seed(seed + job.number) for job in chunk],
                              callback_on_step_end=step_reporter(progress, where, concept.class_infer_steps)).images
            for job, image in zip(chunk, images):
                job.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(job.path.with_suffix(".txt"), job.words + "\n")
                with atomic_path(job.path) as tmp:
                    image.save(tmp, format="PNG")
            done += len(chunk)
            log(f"class images: {done} of {len(jobs)} generated")
    finally:
        unet.train(was_training)
    return done


def _chunks(jobs: list[ClassJob], batch_size: int):
    chunk: list[ClassJob] = []
    for job in jobs:
        if chunk and (len(chunk) == batch_size or (job.concept, job.size) != (chunk[0].concept, chunk[0].size)):
            yield chunk
            chunk = []
        chunk.append(job)
    if chunk:
        yield chunk


def load_class_images(concepts: list[Concept], items: list[TrainItem], model, warn: Callable[[str], None],
                      matching: bool = True) -> tuple[list[tuple[TrainItem, ImageInfo]], list[list[int]]]:
    """(class item, header info) pairs, each class item at its owner's bucket, and for every instance item the
    class items it owns (round-robin pairing, see `dataset`). With `matching` the first
    num_class_images_per × instances of the folder are used; without it (disable_class_matching), all."""
    classes: list[tuple[TrainItem, ImageInfo]] = []
    owned: list[list[int]] = [[] for _ in items]
    for index, concept in enumerate(concepts):
        if concept.num_class_images_per <= 0:
            continue
        owners = _concept_items(items, index)
        folder = class_folder(concept, index, model)
        paths = existing_class_images(folder)
        if matching:
            paths = paths[:concept.num_class_images_per * len(owners)]
        opened = probe_all(paths, warn)
        if not opened:
            warn(f"concept {index}: no class images in {folder}; training it without prior preservation")
            continue
        count, made = len(opened), {}
        for slot, owner in enumerate(owners):
            mine = [i for i in range(count) if i % len(owners) == slot] or [slot % count]
            for i in mine:
                bucket = items[owner].bucket
                if (i, bucket) not in made:
                    info = opened[i]
                    caption = build_caption(concept.class_prompt, info.path)
                    made[(i, bucket)] = len(classes)
                    classes.append((TrainItem(info.path, caption, index, bucket, is_class=True), info))
                owned[owner].append(made[(i, bucket)])
    return classes, owned
