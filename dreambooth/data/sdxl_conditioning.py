"""SDXL's size and crop conditioning ("micro-conditioning"): per image, the six numbers the UNet's added
embedding takes, in SDXL's order: original height, original width, crop top, crop left, target height,
target width.

The original size is the image as stored (after EXIF rotation, before any resize); the crop offsets are
where the bucket-sized window starts in the image once resized to cover the bucket (buckets.cover_and_crop,
the same geometry that cuts the pixels), mirrored for a horizontally flipped copy (hflip: a centred
window on an odd number of spare columns sits one column off the centre, on the other side once
mirrored); the target size is the bucket. So a portrait photo trained in a
square bucket tells the model "this was cut from a taller picture, from this far down", and at sampling
time (crop 0, 0 and original = target) the model is asked for a whole, uncropped picture.
"""
from __future__ import annotations

from .buckets import cover_and_crop


def size_and_crop(width: int, height: int, bucket: tuple[int, int],
                  flipped: bool = False) -> tuple[int, int, int, int, int, int]:
    """(original h, original w, crop top, crop left, target h, target w) of a width x height image in `bucket`
    (width, height). `flipped`: the mirrored copy (hflip), whose window starts as far from the left edge as
    the unmirrored one ends from the right edge."""
    (resized_w, _), (left, top) = cover_and_crop(width, height, bucket)
    target_w, target_h = bucket
    if flipped:
        left = resized_w - target_w - left
    return (height, width, top, left, target_h, target_w)


def time_ids(entries, device):
    """float32 (N, 2, 6): size_and_crop of each (item with its bucket, image info) pair, unmirrored and
    mirrored, on `device`."""
    import torch

    rows = [[size_and_crop(info.width, info.height, item.bucket, flipped) for flipped in (False, True)]
            for item, info in entries]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 2, 6).to(device)
