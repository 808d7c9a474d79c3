"""SDXL's size and crop conditioning ("micro-conditioning"): per image, the six numbers the UNet's added
embedding takes, in SDXL's order: original height, original width, crop top, crop left, target height,
target width.

The original size is the image as stored (after EXIF rotation, before any resize); the crop offsets are
where the bucket-sized window starts in the image once resized to cover the bucket (buckets.cover_and_crop,
the same geometry that cuts the pixels); the target size is the bucket. So a portrait photo trained in a
square bucket tells the model "this was cut from a taller picture, from this far down", and at sampling
time (crop 0, 0 and original = target) the model is asked for a whole, uncropped picture.
"""
from __future__ import annotations

from .buckets import cover_and_crop


def size_and_crop(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """(original h, original w, crop top, crop left, target h, target w) of a width x height image in `bucket`
    (width, height)."""
    _, (left, top) = cover_and_crop(width, height, bucket)
    target_w, target_h = bucket
    return (height, width, top, left, target_h, target_w)


def time_ids(entries, device):
    """float32 (N, 6) of size_and_crop for (item with its bucket, image info) pairs, on `device`."""
    import torch

    rows = [size_and_crop(info.width, info.height, item.bucket) for item, info in entries]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 6).to(device)
