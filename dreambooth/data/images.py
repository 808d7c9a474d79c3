"""Finding training images, reading their sizes from the file headers, and decoding one at a time.

Nothing here keeps full-size pixels: `probe` reads an image's size (Pillow's `Image.open` is lazy: only
the header is parsed) and checks that it can be decoded without holding it; `load_pixels` decodes one
image straight to its bucket size (JPEGs through the decoder's DCT scaling, so a 12 MP photo is never
expanded in full) when its latents are cached. A folder of 200 phone photos therefore costs the same
memory as a folder of 8.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DreamboothError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Files that live beside images and are not images: never reported as unsupported.
SIDECAR_SUFFIXES = {".txt", ".caption", ".json", ".jsonl", ".npz", ".npy", ".safetensors", ".db", ".ini", ".md"}
_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class ImageInfo:
    """What bucketing needs, from the header: the size as displayed (after EXIF rotation)."""

    path: Path
    width: int
    height: int
    mode: str = "RGB"
    frames: int = 1


def find_images(folder: str | Path, field: str = "instance_data_dir",
                warn: Callable[[str], None] | None = None) -> list[Path]:
    """Image files under `folder` (recursive, sorted). Missing folder or no images → DreamboothError.
    Other files that are not known sidecars (captions etc.) are reported through `warn`, by name."""
    if not str(folder).strip():
        raise DreamboothError(f"{field} is empty: choose the folder with your training images", field=field)
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DreamboothError(f"{field} '{folder}' does not exist or is not a folder", field=field)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES | SIDECAR_SUFFIXES
              and p.name.lower() != "thumbs.db"]
    if others and warn is not None:
        names = ", ".join(p.name for p in others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        warn(f"{field} '{folder}': {len(others)} file(s) not used, not a supported image type "
             f"({', '.join(sorted(IMAGE_SUFFIXES))}): {names}")
    if not images:
        raise DreamboothError(
            f"{field} '{folder}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})", field=field)
    return images


def probe(path: Path) -> ImageInfo:
    """The image's displayed size from its header, after checking that its data decodes.

    The check holds no full-size pixels: JPEGs are decoded at 1/8 scale (a truncated file still fails),
    PNGs are checked chunk by chunk (CRCs) without inflating them, other formats are decoded and dropped.
    """
    from PIL import Image

    with Image.open(path) as image:
        if image.format == "PNG":
            image.verify()  # must come straight after open; the header is read again below
    with Image.open(path) as image:
        width, height = image.size
        mode, frames, fmt = image.mode, getattr(image, "n_frames", 1), image.format
        if image.getexif().get(_EXIF_ORIENTATION) in _ROTATED:
            width, height = height, width
        if fmt == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        elif fmt != "PNG":
            image.load()
    return ImageInfo(Path(path), width, height, mode, frames)


def probe_all(paths: list[Path], warn: Callable[[str], None]) -> list[ImageInfo]:
    """Every readable image's header info; an unreadable one is skipped with a warning naming it."""
    import struct

    from PIL import Image, UnidentifiedImageError

    found = []
    for path in paths:
        try:
            info = probe(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error,
                Image.DecompressionBombError) as error:
            warn(f"skipping unreadable image {path}: {error}")
            continue
        if info.frames > 1:
            warn(f"{path.name} is animated ({info.frames} frames): training on its first frame")
        if info.mode in _SIXTEEN_BIT:
            warn(f"{path.name} is a 16-bit image (mode {info.mode}): scaled to 8 bits per channel")
        found.append(info)
    return found


def to_rgb(image):
    """8-bit RGB. 16-bit and 32-bit grayscale (PNG "I;16" / "I") are scaled down, not clipped: Pillow's own
    convert("RGB") clips them at 255, which turns a normal 16-bit photo white."""
    import numpy as np
    from PIL import Image

    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        else:  # "I" holds 8-bit data only when nothing exceeds 255
            top = 65535.0 if image.mode != "I" or values.max(initial=0.0) > 255 else 255.0
        scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    return image.convert("RGB")


def open_rgb(path: Path):
    """Open an image fully as 8-bit RGB (first frame, EXIF rotation applied). For previews and tests; the
    training set uses `load_pixels`, which never holds the full-size image for JPEGs."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def load_pixels(info: ImageInfo, size: tuple[int, int]):
    """One image decoded, EXIF-rotated, converted to RGB and fitted to `size` (width, height): uint8 (3, H, W).

    A JPEG is decoded through its DCT scaling (1/2, 1/4 or 1/8) at the smallest size that still covers
    the bucket, so a 3000x4000 photo for a 512 px bucket decodes at 750x1000."""
    import math

    from PIL import Image, ImageOps

    from .buckets import fit_to_bucket

    target_w, target_h = size
    scale = max(target_w / info.width, target_h / info.height)
    need = (math.ceil(info.width * scale), math.ceil(info.height * scale))
    try:
        with Image.open(info.path) as image:
            if image.format == "JPEG" and scale < 1:
                rotated = image.getexif().get(_EXIF_ORIENTATION) in _ROTATED
                image.draft("RGB", (need[1], need[0]) if rotated else need)
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError) as error:  # changed on disk since it was probed
        raise DreamboothError(f"image {info.path} could not be decoded ({error}): fix or remove it") from None
    return fit_to_bucket(rgb, size)
