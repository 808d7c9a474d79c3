"""Building the training set: buckets, pixels, latent caches (RAM / disk) and text caches."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..model.long_prompts import PromptLayout
from ..model.text import encode_prompts
from .buckets import bucket_sizes, nearest_bucket
from .cache import DiskCache, encode_rows, entry_key, file_digest, norm_fingerprint, vae_fingerprint
from .captions import warn_truncated
from .dataset import Bucket, TrainItem, TrainingSet, tokenize
from .images import load_pixels
from .sdxl_conditioning import time_ids


def assign_buckets(items: list[TrainItem], images: list, resolution: int, step: int, enabled: bool) -> None:
    """Give every item without one the bucket nearest to its image's aspect ratio (`images`: anything with
    width and height, e.g. the header-only ImageInfo)."""
    sizes = bucket_sizes(resolution, step, enabled)
    for item, image in zip(items, images):
        if item.bucket is None:
            item.bucket = nearest_bucket(image.width, image.height, sizes)


def build_training_set(pairs: list[tuple[TrainItem, object]], resolution: int, vae, text_encoder, tokenizer,
                       device, clip_skip: int = 1, *, classes: list[tuple[TrainItem, object]] | None = None,
                       owned: list[list[int]] | None = None, cache_latents: bool = True,
                       cache_dir: Path | None = None, enable_buckets: bool = True, step: int = 64,
                       hflip: bool = False, shuffle_tags: bool = False, keep_tags: int = 1,
                       cache_text: bool = True, layout=None, dynamic_norm: bool = False,
                       warn: Callable[[str], None] | None = None, log: Callable[[str], None] | None = None,
                       progress: Callable[[str], None] | None = None) -> TrainingSet:
    """Encode the instance (item, image info) pairs and the class pairs once, one chunk of images at a time.

    `classes` are class items with their bucket already set (that of the instance owning them) and
    `owned[i]` lists the class items instance item i brings into its batches. `cache_dir` (the model's
    cache/ folder) keeps the latents on disk between runs; `cache_text` False when the text encoder trains.
    """
    import torch

    warn = warn or (lambda message: None)
    items = [item for item, _ in pairs]
    assign_buckets(items, [image for _, image in pairs], resolution, step, enable_buckets)
    class_items = [item for item, _ in classes or []]
    owned = owned or [[] for _ in items]
    entries = list(pairs) + list(classes or [])

    sizes = sorted({item.bucket for item, _ in entries})
    bucket_of = {size: index for index, size in enumerate(sizes)}
    rows: list[list[int]] = [[] for _ in sizes]
    places = []
    for number, (item, _) in enumerate(entries):
        b = bucket_of[item.bucket]
        places.append((b, len(rows[b])))
        rows[b].append(number)

    disk = DiskCache(cache_dir) if cache_latents and cache_dir is not None else None
    fingerprint = norm_fingerprint(vae_fingerprint(vae), dynamic_norm) if disk is not None else ""
    digests: dict[Path, str] = {}
    buckets = []
    done = [0]  # images encoded (or read from the disk cache) so far, for the status line

    def encoded(count: int) -> None:
        done[0] += count
        if progress is not None:
            progress(f"encoding images {done[0]} of {len(entries)}")

    for size, members in zip(sizes, rows):
        bucket = Bucket(size)
        load = lambda row, members=members, size=size: load_pixels(entries[members[row]][1], size)  # noqa: E731
        if not cache_latents:  # bucket-sized uint8 only, never the source images
            bucket.pixels = torch.stack([load(row) for row in range(len(members))])
        else:
            flips = [False, True] if hflip else [False]
            keys = None
            if disk is not None:
                keys = {flip: [entry_key(_digest(digests, entries[n][0].path), size, flip, resolution, fingerprint)
                               for n in members] for flip in flips}
            latents = encode_rows(vae, load, len(members), size, device, keys, disk, flips, dynamic_norm,
                                  on_encoded=encoded)
            bucket.mean, bucket.std = latents[False]
            if hflip:
                bucket.mean_flip, bucket.std_flip = latents[True]
        buckets.append(bucket)
    if disk is not None:
        removed = disk.prune()
        if log is not None:
            log(f"latent cache: {disk.hits} of {len(disk.used)} entries from {disk.folder}"
                + (f", {removed} stale removed" if removed else ""))

    captions = sorted({item.caption for item, _ in entries})
    by_caption: dict[str, list[Path]] = {}
    for item, _ in entries:
        by_caption.setdefault(item.caption, []).append(item.path)
    layout = layout or PromptLayout(tokenizer)
    warn_truncated(by_caption, layout, warn)
    index = {caption: n for n, caption in enumerate(captions)}
    input_ids, used = tokenize(captions, layout, device)
    embeddings = pooled = None
    if cache_text and not shuffle_tags:
        with torch.no_grad():
            embeddings, pooled = encode_prompts(text_encoder, input_ids, clip_skip)
        embeddings, pooled = embeddings.float(), (pooled.float() if pooled is not None else None)
    sizes_and_crops = time_ids(entries, device)  # SDXL's size/crop conditioning (other UNets ignore it)
    return TrainingSet(items, class_items, places[:len(items)], places[len(items):], owned, buckets, captions,
                       [index[item.caption] for item in items], [index[item.caption] for item in class_items],
                       input_ids, embeddings, vae.config.scaling_factor, device, vae=None if cache_latents else vae,
                       hflip=hflip, shuffle=shuffle_tags, keep_tags=keep_tags, layout=layout, used=used,
                       dynamic_norm=dynamic_norm, pooled=pooled, time_ids=sizes_and_crops)


def _digest(memo: dict, path: Path) -> str:
    if path not in memo:
        memo[path] = file_digest(path)
    return memo[path]
