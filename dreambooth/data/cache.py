"""Latent encoding and the on-disk latent cache under the model's `cache/latents/`.

An entry holds the VAE latent distribution (mean, std) of one image at one bucket size, flipped or not.
Its file name is a hash of everything the latents depend on: the image file's content, the bucket size,
the flip, the resolution and a fingerprint of the VAE (config, dtype and weights). Editing or replacing
an image, changing the resolution or bucket, or swapping the VAE therefore misses the cache and encodes
afresh; entries that the current run did not use are removed, so stale ones do not pile up.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..platform.fsutil import atomic_path
from .buckets import to_unit_range

ENCODE_PIXELS = 512 * 512  # pixels per VAE encode call while caching (see encode_chunk_size)
ENCODE_CHUNK_MAX = 16
FORMAT = 1


def file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def vae_fingerprint(vae) -> str:
    """Changes when the VAE's config, dtype or any weight changes (one device->host copy, at set-up)."""
    import torch

    config = json.dumps(dict(vae.config), sort_keys=True, default=str)
    with torch.no_grad():
        stats = torch.stack([torch.stack([p.double().sum(), p.double().abs().sum()]) for p in vae.parameters()])
    digest = hashlib.sha1(config.encode())
    digest.update(str(vae.dtype).encode())
    digest.update(stats.cpu().numpy().tobytes())
    return digest.hexdigest()


def entry_key(digest: str, size: tuple[int, int], flip: bool, resolution: int, fingerprint: str) -> str:
    text = f"{FORMAT}|{digest}|{size[0]}x{size[1]}|{int(flip)}|{resolution}|{fingerprint}"
    return hashlib.sha1(text.encode()).hexdigest()


def encode(vae, pixels, device):
    """(mean, std) float32 of the VAE latent distribution for uint8 pixels (B, 3, H, W)."""
    import torch

    with torch.no_grad():
        dist = vae.encode(to_unit_range(pixels.to(device)).to(dtype=vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()


class DiskCache:
    """safetensors files `<key>.safetensors` holding `mean` and `std`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / "latents"
        self.used: set[str] = set()
        self.hits = 0

    def load(self, key: str, device):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        self.used.add(key)
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path), device="cpu")
            self.hits += 1
            return tensors["mean"].to(device), tensors["std"].to(device)
        except (SafetensorError, OSError, KeyError):  # a damaged entry is re-encoded and rewritten
            return None

    def save(self, key: str, mean, std) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{key}.safetensors") as tmp:
            save_file({"mean": mean.detach().cpu().contiguous(), "std": std.detach().cpu().contiguous()}, str(tmp))

    def prune(self) -> int:
        """Remove entries this run did not use (their image, bucket, resolution or VAE changed)."""
        removed = 0
        if self.folder.is_dir():
            for path in self.folder.glob("*.safetensors"):
                if path.stem not in self.used:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def encode_chunk_size(size: tuple[int, int], batch_pixels: int = ENCODE_PIXELS) -> int:
    """Images per VAE encode call at this bucket size. The VAE encoder's first activations are 128
    channels at full resolution (~1 GB for 8 images at 512 px in fp32), so the caching pass encodes
    about one 512 px image's worth of pixels at a time: 1 image at 512 px, 16 at 128 px."""
    return max(1, min(ENCODE_CHUNK_MAX, batch_pixels // (size[0] * size[1])))


def encode_rows(vae, load: Callable[[int], object], count: int, size: tuple[int, int], device,
                keys: dict[bool, list[str]] | None, disk: DiskCache | None, flips: list[bool],
                on_encoded: Callable[[int], None] = lambda count: None):
    """{flip: (mean, std)} for `count` images of one bucket, from the disk cache where it has them;
    `on_encoded(n)` hears of each n images done (cache hits first, then each encoded chunk).

    `load(row)` decodes one image to uint8 (3, H, W) at the bucket size; only a chunk of them is held at
    once, so memory does not grow with the number or the size of the source images."""
    import torch

    found = {flip: ([None] * count, [None] * count) for flip in flips}
    missing = []
    for row in range(count):
        complete = True
        for flip in flips:
            hit = disk.load(keys[flip][row], device) if disk is not None else None
            if hit is None:
                complete = False
            else:
                found[flip][0][row], found[flip][1][row] = hit
        if not complete:
            missing.append(row)
    if count > len(missing):
        on_encoded(count - len(missing))
    chunk = encode_chunk_size(size)
    for start in range(0, len(missing), chunk):
        rows = missing[start:start + chunk]
        pixels = torch.stack([load(row) for row in rows])
        for flip in flips:
            mean, std = encode(vae, pixels.flip(-1) if flip else pixels, device)
            for offset, row in enumerate(rows):
                found[flip][0][row], found[flip][1][row] = mean[offset], std[offset]
                if disk is not None:
                    disk.save(keys[flip][row], mean[offset], std[offset])
        del pixels
        on_encoded(len(rows))
    return {flip: (torch.stack(means), torch.stack(stds)) for flip, (means, stds) in found.items()}
