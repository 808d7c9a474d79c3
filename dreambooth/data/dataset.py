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


def encode_prompts(prompts: list[str], tokenizer, text_encoder, device):
    import torch

    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return text_encoder(tokens)[0]


class CachedTrainingSet:
    """Latent distributions (mean, std) per image and one text embedding per distinct caption."""

    def __init__(self, items: list[TrainItem], latent_mean, latent_std, embeddings, caption_index: list[int],
                 scaling_factor: float):
        self.items = items
        self.latent_mean = latent_mean
        self.latent_std = latent_std
        self.embeddings = embeddings
        self.caption_index = caption_index
        self.scaling_factor = scaling_factor

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: list[int], generator):
        """Scaled latents sampled from the cached distributions, and the matching embeddings."""
        import torch

        mean = self.latent_mean[indices]
        std = self.latent_std[indices]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        latents = (mean + std * noise) * self.scaling_factor
        embeddings = self.embeddings[[self.caption_index[i] for i in indices]]
        return latents, embeddings


def build_training_set(pairs: list[tuple[TrainItem, object]], resolution: int, vae, text_encoder, tokenizer,
                       device) -> CachedTrainingSet:
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
    embeddings = encode_prompts(captions, tokenizer, text_encoder, device).float()
    caption_index = [captions.index(item.caption) for item in items]
    return CachedTrainingSet(items, torch.cat(means), torch.cat(stds), embeddings, caption_index,
                             vae.config.scaling_factor)
