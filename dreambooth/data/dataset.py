"""Training items, the Batch the loop consumes, and the training set (buckets, caches, prior pairs).

The loop sees four things: `len(training_set)` (instance images; an epoch shows each once), `items`,
`epoch_batches(seed, epoch, batch_size)` and `batch(keys, generator)`.

Batch keys. `epoch_batches` returns, per batch, keys `epoch * len(items) + item`: the item index plus
the epoch, so that `batch` can pick the epoch's class images without any state (resume and data-parallel
processes get the same pairs). `item_of(key)` gives the item index back.

Prior preservation pairing. The class images of a concept (sorted by path) C_0..C_{m-1} and its instance
images I_0..I_{n-1} (in item order) are paired round-robin: C_i belongs to I_{i mod n}, so instance I_j
owns C_j, C_{j+n}, C_{j+2n}, ... and in epoch e brings the (e mod its count)-th of them into its batch
(I_j owns C_{j mod m} when there are fewer class images than instance images). With the default
num_class_images_per = k there are m = k*n class images, each instance owns k of them and every class image
is used once every k epochs. A class image is resized and cropped to the bucket of the instance that owns
it (generated class images are made at that size), so the pair always fits one batch: the instance rows
come first, then their class rows, with `Batch.prior` True for the class rows.

Latents. With cache_latents the VAE latent distributions (mean, std) are encoded once (and, with hflip,
once more mirrored); each use draws a fresh sample mean + std * noise. Without it, `batch` runs the VAE on
the stored pixels every time, drawing the flip and the noise from the same generator in the same order,
so both paths give the same latents. Text embeddings are cached per distinct caption when the text
encoder is frozen for the whole run, and from the moment it stops training (`TrainingSet.cache_text`);
with shuffle_tags the captions change per use and `batch` returns fresh input_ids with embeddings None
(the loop encodes them).

SDXL. The ids hold one row per tokenizer (N, 2, 77), the cache keeps the pooled embedding beside the
context (`pooled`), and every entry (instance and class image) has its size/crop conditioning in
`time_ids` (sdxl_conditioning), which the batch hands on; other model families ignore it. With hflip each
row gets the crop offset of the copy it trains on (`Batch.flipped`): the mirrored copy's is mirrored too.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Concept
from ..errors import DreamboothError
from .captions import build_caption, shuffle_tags
from .images import ImageInfo, find_images, probe_all


@dataclass
class TrainItem:
    path: Path
    caption: str
    concept: int
    bucket: tuple[int, int] | None = None  # (width, height), set when the training set is built
    is_class: bool = False


def check_concepts(concepts: list[Concept]) -> int:
    """Fail fast, before anything is loaded or written, when a concept has no usable folder; else the
    number of instance image files."""
    if not concepts:
        raise DreamboothError("no concepts: set instance_data_dir (Concept 1's dataset directory in the tab) "
                              "or concepts_list to your image folder", field="concepts_list")
    return sum(len(find_images(concept.instance_data_dir, _folder_field(concepts, index)))
               for index, concept in enumerate(concepts))


def _folder_field(concepts: list[Concept], index: int) -> str:
    return "instance_data_dir" if len(concepts) == 1 else f"concepts_list[{index}].instance_data_dir"


def collect_items(concepts: list[Concept], warn: Callable[[str], None]) -> list[tuple[TrainItem, ImageInfo]]:
    """(item, header info) for every readable instance image of every concept; no pixels are kept."""
    check_concepts(concepts)
    items = []
    for index, concept in enumerate(concepts):
        field = _folder_field(concepts, index)
        paths = find_images(concept.instance_data_dir, field, warn)
        found = probe_all(paths, warn)
        if not found:
            raise DreamboothError(f"{field} '{concept.instance_data_dir}': none of its images could be read",
                                  field=field)
        for info in found:
            caption = build_caption(concept.instance_prompt, info.path, concept.instance_token, concept.class_token)
            items.append((TrainItem(info.path, caption, index), info))
    return items


def tokenize(prompts: list[str], layout, device):
    """(token ids on `device`, positions used per prompt) in the layout's long-prompt windows."""
    ids, used = layout.tokenize(prompts)
    return to_device(ids, device), used


def to_device(values, device):
    """A small host tensor (or list) on `device` without waiting for the GPU (pinned, non-blocking copy)."""
    import torch

    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class Batch:
    """One micro-batch as the loop consumes it."""

    latents: object  # scaled VAE latents (B, C, h, w)
    embeddings: object  # text-encoder outputs (B, T, D), or None when the loop must encode input_ids
    input_ids: object  # token ids (B, T), T = 77 per long-prompt window, SDXL (B, 2, 77): for text-encoder training
    prior: object  # bool (B,): True for class images of prior preservation
    pooled: object = None  # SDXL: pooled text embeddings (B, P) cached beside `embeddings`
    time_ids: object = None  # SDXL: (B, 6) original size, crop top-left, target size (sdxl_conditioning)
    flipped: object = None  # bool (B,): rows trained on the mirrored image (hflip), else None


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch; a function of (seed, epoch) so a resume sees the same order."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


@dataclass
class Bucket:
    """The images of one bucket: cached latent distributions, or the pixels to encode at every use."""

    size: tuple[int, int]
    mean: object = None  # (rows, C, h, w) on the device, with cache_latents
    std: object = None
    mean_flip: object = None  # the same for the mirrored images, with hflip
    std_flip: object = None
    pixels: object = None  # uint8 (rows, 3, H, W) on the CPU, without cache_latents


class TrainingSet:
    """Instance items, their class images, buckets and caches; see the module docstring for the rules."""

    def __init__(self, items: list[TrainItem], class_items: list[TrainItem], places: list[tuple[int, int]],
                 class_places: list[tuple[int, int]], pairs: list[list[int]], buckets: list[Bucket],
                 captions: list[str], caption_index: list[int], class_caption_index: list[int], input_ids,
                 embeddings, scaling_factor: float, device, *, vae=None, hflip: bool = False,
                 shuffle: bool = False, keep_tags: int = 1, layout=None, used: list[int] | None = None,
                 dynamic_norm: bool = False, pooled=None, time_ids=None):
        self.items = items
        self.class_items = class_items
        self.places = places  # item -> (bucket, row)
        self.class_places = class_places  # class item -> (bucket, row)
        self.pairs = pairs  # item -> class items it owns (round-robin by epoch)
        self.buckets = buckets
        self.captions = captions
        self.caption_index = caption_index
        self.class_caption_index = class_caption_index
        self.input_ids = input_ids  # per distinct caption, on the device
        self.embeddings = embeddings  # per distinct caption, or None
        self.pooled = pooled  # SDXL: per distinct caption, beside embeddings
        self.time_ids = time_ids  # (entries, 2, 6), instance items then class items: SDXL's size/crop, plain/mirrored
        self.scaling_factor = scaling_factor
        self.device = device
        self.vae = vae
        self.hflip = hflip
        self.shuffle = shuffle
        self.keep_tags = keep_tags
        self.layout = layout  # model.long_prompts.PromptLayout: windows, padding
        self.used = used  # per distinct caption: token positions up to its last EOS
        self.dynamic_norm = dynamic_norm  # dynamic_img_norm, for latents encoded at every use
        self.seed = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def cached(self) -> bool:
        return self.buckets[0].pixels is None

    def item_of(self, key: int) -> int:
        return key % len(self.items)

    def class_for(self, item: int, epoch: int) -> int | None:
        owned = self.pairs[item]
        return owned[epoch % len(owned)] if owned else None

    # epochs -----------------------------------------------------------------------------------------
    def _by_bucket(self, order: list[int]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for item in order:
            groups.setdefault(self.places[item][0], []).append(item)
        return groups

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(-(-len(g) // batch_size) for g in self._by_bucket(list(range(len(self)))).values())

    def plan_items(self, batch_size: int) -> int:
        """An item count that gives the interval plan this set's number of batches per epoch (a bucket's
        last batch may be short, so buckets can add batches)."""
        return len(self) if len(self.buckets) == 1 else self.batches_per_epoch(batch_size) * batch_size

    def epoch_batches(self, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
        """The epoch's batches of keys, in training order; each batch from one bucket."""
        import torch

        self.seed = seed
        order = epoch_order(len(self), seed, epoch)
        groups = self._by_bucket(order)
        batches = [group[i:i + batch_size] for b in sorted(groups) for group in [groups[b]]
                   for i in range(0, len(group), batch_size)]
        if len(groups) > 1:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        base = epoch * len(self)
        return [[base + item for item in batch] for batch in batches]

    # one batch --------------------------------------------------------------------------------------
    def batch(self, keys: list[int], generator) -> Batch:
        """Latents sampled for the batch's images (and their class images), and the matching text inputs."""
        count = len(self.items)
        items = [key % count for key in keys]
        classes = [c for c in (self.class_for(item, key // count) for key, item in zip(keys, items)) if c is not None]
        bucket_ids = {self.places[i][0] for i in items} | {self.class_places[c][0] for c in classes}
        if len(bucket_ids) != 1:
            raise ValueError(f"a batch must come from one bucket, got buckets {sorted(bucket_ids)}")
        bucket = self.buckets[bucket_ids.pop()]
        rows = [self.places[i][1] for i in items] + [self.class_places[c][1] for c in classes]
        latents, flipped = self._latents(bucket, rows, generator)
        ids = [self.caption_index[i] for i in items] + [self.class_caption_index[c] for c in classes]
        pooled = None
        if self.shuffle:
            texts = [self._shuffled(keys[n], self.captions[ids[n]]) for n in range(len(items))]
            texts += [self.captions[i] for i in ids[len(items):]]
            (input_ids, used), embeddings = tokenize(texts, self.layout, self.device), None
        else:
            index = to_device(ids, self.input_ids.device)
            input_ids, used = self.input_ids[index], [self.used[i] for i in ids]
            embeddings = self.embeddings[index] if self.embeddings is not None else None
            pooled = self.pooled[index] if self.pooled is not None else None
        input_ids = self.layout.trim(input_ids, used)  # pad_tokens off: up to the batch's longest caption
        embeddings = self.layout.trim(embeddings, used) if embeddings is not None else None
        prior = to_device([False] * len(items) + [True] * len(classes), latents.device)
        device = self.time_ids.device
        entries = to_device(items + [len(self.items) + c for c in classes], device)
        copy = flipped.to(device).long() if flipped is not None else 0  # 1: the mirrored image's crop offset
        return Batch(latents, embeddings, input_ids, prior, pooled, self.time_ids[entries, copy], flipped)

    def cache_text(self, text_encoder, clip_skip: int, chunk: int = 64) -> None:
        """Encode every distinct caption once, for the rest of a run whose text encoder has stopped
        training (shuffled captions change per use and stay uncached)."""
        import torch

        from ..model.text import encode_prompts

        if self.shuffle:
            return
        with torch.no_grad():
            encoded = [encode_prompts(text_encoder, self.input_ids[i:i + chunk], clip_skip)
                       for i in range(0, len(self.input_ids), chunk)]
        self.embeddings = torch.cat([context.float() for context, _ in encoded])
        self.pooled = torch.cat([pooled.float() for _, pooled in encoded]) if encoded[0][1] is not None else None

    def _shuffled(self, key: int, caption: str) -> str:
        return shuffle_tags(caption, self.keep_tags, random.Random(f"{self.seed}:{key}"))

    def _latents(self, bucket: Bucket, rows: list[int], generator):
        """(scaled latents, which rows are mirrored: bool (B,) or None without hflip)."""
        import torch

        from .cache import encode

        flip = None
        if self.hflip:
            flip = torch.rand(len(rows), generator=generator, device=generator.device) < 0.5
        if bucket.pixels is None:
            index = to_device(rows, bucket.mean.device)
            mean, std = bucket.mean[index], bucket.std[index]
            if flip is not None:
                where = flip.to(mean.device)[:, None, None, None]
                mean = torch.where(where, bucket.mean_flip[index], mean)
                std = torch.where(where, bucket.std_flip[index], std)
        else:
            pixels = to_device(bucket.pixels[torch.tensor(rows)], self.device)
            if flip is not None:
                pixels = torch.where(flip.to(pixels.device)[:, None, None, None], pixels.flip(-1), pixels)
            mean, std = encode(self.vae, pixels, self.device, self.dynamic_norm)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return (mean + std * noise) * self.scaling_factor, flip
