"""Aspect-ratio buckets: sizes of about resolution x resolution pixels, each image in the nearest one.

An image goes to the bucket whose aspect ratio is closest to its own (compared on a log scale), is
resized so that it covers the bucket and is centre-cropped to it. A batch only ever holds images of one
bucket. With buckets off there is one bucket, the `resolution` square (short side resized, centre crop).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..platform.fsutil import atomic_write_json

BUCKET_FILE = "bucket_counts.json"


def size_step(vae, unet, resolution: int) -> int:
    """Bucket sides are multiples of what the VAE and UNet can divide (64 for SD: x8 VAE, 3 UNet downsamples)."""
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_scale = 2 ** (len(unet.config.block_out_channels) - 1)
    step = vae_scale * unet_scale
    return max(step, 64) if resolution >= 256 else step


def bucket_sizes(resolution: int, step: int, enabled: bool = True) -> list[tuple[int, int]]:
    """(width, height) buckets: the square, plus sides from resolution/2 to 2 x resolution in `step`s,
    each with the largest other side that keeps the area at most resolution²."""
    if not enabled:
        return [(resolution, resolution)]
    area = resolution * resolution
    low = max(step, (resolution // 2) // step * step)
    high = 2 * resolution
    sizes = {(resolution, resolution)}
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket closest in aspect ratio; ties go to the larger area, then the wider one."""
    aspect = math.log(width / height)
    return min(sizes, key=lambda s: (round(abs(math.log(s[0] / s[1]) - aspect), 9), -s[0] * s[1], -s[0]))


def cover_and_crop(width: int, height: int, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized width, height), (crop left, top)): a width x height image scaled to cover `size` (width,
    height), and where the centred `size` window starts in it."""
    target_w, target_h = size
    scale = max(target_w / width, target_h / height)
    resized = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
    return resized, ((resized[0] - target_w) // 2, (resized[1] - target_h) // 2)


def fit_to_bucket(image, size: tuple[int, int]):
    """The image resized to cover `size` (width, height) and centre-cropped: uint8 tensor (3, H, W)."""
    import numpy as np
    import torch
    from PIL import Image

    target_w, target_h = size
    (resized_w, resized_h), (left, top) = cover_and_crop(image.width, image.height, size)
    resized = image.resize((resized_w, resized_h), Image.BICUBIC)
    cropped = resized.crop((left, top, left + target_w, top + target_h))
    return torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_unit_range(pixels):
    """uint8 (B, 3, H, W) -> float32 in [-1, 1], as the VAE expects."""
    return pixels.float() / 127.5 - 1.0


def bucket_report(instance_buckets: list[tuple[int, int]], class_buckets: list[tuple[int, int]],
                  resolution: int) -> dict:
    """Counts per bucket: {"resolution", "buckets": [{"width", "height", "images", "class_images"}]}."""
    sizes = sorted(set(instance_buckets) | set(class_buckets))
    rows = [{"width": w, "height": h, "images": instance_buckets.count((w, h)),
             "class_images": class_buckets.count((w, h))} for w, h in sizes]
    return {"resolution": resolution, "buckets": rows}


def describe(report: dict) -> str:
    parts = []
    for row in report["buckets"]:
        text = f"{row['width']}x{row['height']}: {row['images']} image(s)"
        if row["class_images"]:
            text += f" + {row['class_images']} class"
        parts.append(text)
    return "buckets " + "; ".join(parts)


def write_bucket_counts(model_path: Path, report: dict) -> Path:
    path = Path(model_path) / BUCKET_FILE
    atomic_write_json(path, report)
    return path
