"""Finding instance images and opening them safely."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import DreamboothError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def find_images(folder: str | Path, field: str = "instance_data_dir") -> list[Path]:
    """Image files under `folder` (recursive, sorted). Missing folder or no images → DreamboothError."""
    if not str(folder).strip():
        raise DreamboothError(f"{field} is empty: choose the folder with your training images", field=field)
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DreamboothError(f"{field} '{folder}' does not exist or is not a folder", field=field)
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DreamboothError(
            f"{field} '{folder}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})", field=field)
    return images


def open_rgb(path: Path):
    """Open an image fully (decoding errors surface here, not mid-training) as RGB."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def open_all(paths: list[Path], warn: Callable[[str], None]) -> list[tuple[Path, object]]:
    """Open every image; a corrupt one is skipped with a warning naming it."""
    from PIL import UnidentifiedImageError

    opened = []
    for path in paths:
        try:
            opened.append((path, open_rgb(path)))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            warn(f"skipping unreadable image {path}: {error}")
    return opened
