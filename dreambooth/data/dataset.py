"""The training set, encoded once: VAE latent distributions and text embeddings cached in memory.

The frozen VAE and text encoder would otherwise run on every step for the same inputs; caching them
removes that work from the loop. Each step still draws a fresh latent sample from the cached
distribution (mean + std * noise), exactly as encoding anew would.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Concept
from ..errors import DreamboothError
from ..train.text import encode_text
from .captions import build_caption
from .images import find_images, open_all

ENCODE_CHUNK = 8


@dataclass
class TrainItem:
    path: Path
    caption: str
    concept: int


def check_concepts(concepts: list[Concept]) -> None:
    """Fail fast, before anything is loaded or written, when a concept has no usable folder."""
    if not concepts:
        raise DreamboothError("no concepts: set instance_data_dir (or concepts_list) to your image folder",
                              field="concepts_list")
    for index, concept in enumerate(concepts):
        find_images(concept.instance_data_dir, _folder_field(concepts, index))


def _folder_field(concepts: list[Concept], index: int) -> str:
    return "instance_data_dir" if len(concepts) == 1 else f"concepts_list[{index}].instance_data_dir"


def collect_items(concepts: list[Concept], warn: Callable[[str], None]) -> list[tuple[TrainItem, object]]:
    """(item, PIL image) for every readable instance image of every concept."""
    check_concepts(concepts)
    items = []
    for index, concept in enumerate(concepts):
        field = _folder_field(concepts, index)
        paths = find_images(concept.instance_data_dir, field)
        opened = open_all(paths, warn)
        if not opened:
            raise DreamboothError(f"{field} '{concept.instance_data_dir}': none of its images could be read",
                                  field=field)
        for path, image in opened:
            caption = build_caption(concept.instance_prompt, path, concept.instance_token, concept.class_token)
            items.append((TrainItem(path, caption, index), image))
    return items


def image_to_tensor(image, resolution: int):
    """Resize the short side to `resolution`, centre-crop a square, scale to [-1, 1] (C, H, W)."""
    import numpy as np
    import torch
    from PIL import Image

    width, height = image.size
    scale = resolution / min(width, height)
    resized = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                           Image.BICUBIC)
    left = (resized.width - resolution) // 2
    top = (resized.height - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tokenize(prompts: list[str], tokenizer, device):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids.to(device)


@dataclass
class Batch:
    """One micro-batch as the loop consumes it."""

    latents: object  # scaled VAE latents (B, C, h, w)
    embeddings: object  # text-encoder outputs (B, 77, D), or None when the loop must encode input_ids
    input_ids: object  # token ids (B, 77): for text-encoder training
    prior: object  # bool (B,): True for class images of prior preservation


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch; a function of (seed, epoch) so a resume sees the same order."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


class CachedTrainingSet:
    """Latent distributions (mean, std) per image and one text embedding per distinct caption."""

    def __init__(self, items: list[TrainItem], latent_mean, latent_std, embeddings, input_ids,
                 caption_index: list[int], scaling_factor: float):
        self.items = items
        self.latent_mean = latent_mean
        self.latent_std = latent_std
        self.embeddings = embeddings
        self.input_ids = input_ids
        self.caption_index = caption_index
        self.scaling_factor = scaling_factor

    def __len__(self) -> int:
        return len(self.items)

    def epoch_batches(self, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
        """The epoch's batches of item indices, in training order."""
        order = epoch_order(len(self), seed, epoch)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def batch(self, indices: list[int], generator) -> Batch:
        """Scaled latents sampled from the cached distributions, and the matching text inputs."""
        import torch

        mean = self.latent_mean[indices]
        std = self.latent_std[indices]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        latents = (mean + std * noise) * self.scaling_factor
        captions = [self.caption_index[i] for i in indices]
        return Batch(latents, self.embeddings[captions], self.input_ids[captions],
                     torch.zeros(len(indices), dtype=torch.bool, device=mean.device))


def build_training_set(pairs: list[tuple[TrainItem, object]], resolution: int, vae, text_encoder, tokenizer,
                       device, clip_skip: int = 1) -> CachedTrainingSet:
    """Encode the (item, image) pairs from `collect_items` once."""
    import torch

    items = [item for item, _ in pairs]
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), ENCODE_CHUNK):
            chunk = pairs[start:start + ENCODE_CHUNK]
            pixels = torch.stack([image_to_tensor(image, resolution) for _, image in chunk])
            dist = vae.encode(pixels.to(device, dtype=vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    captions = sorted({item.caption for item in items})
    input_ids = tokenize(captions, tokenizer, device)
    with torch.no_grad():
        embeddings = encode_text(text_encoder, input_ids, clip_skip).float()
    caption_index = [captions.index(item.caption) for item in items]
    return CachedTrainingSet(items, torch.cat(means), torch.cat(stds), embeddings, input_ids, caption_index,
                             vae.config.scaling_factor)
