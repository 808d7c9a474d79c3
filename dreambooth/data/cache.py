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

from ..fsutil import atomic_path
from .buckets import to_unit_range

ENCODE_CHUNK = 8
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


def encode_bucket(vae, pixels, device, keys: list[str] | None, disk: DiskCache | None, flip: bool):
    """(mean, std) for every row of one bucket's uint8 pixels, from the disk cache where it has them."""
    import torch

    rows = pixels.flip(-1) if flip else pixels
    means: list = [None] * len(rows)
    stds: list = [None] * len(rows)
    missing = []
    for row in range(len(rows)):
        found = disk.load(keys[row], device) if disk is not None else None
        if found is None:
            missing.append(row)
        else:
            means[row], stds[row] = found
    for start in range(0, len(missing), ENCODE_CHUNK):
        chunk = missing[start:start + ENCODE_CHUNK]
        mean, std = encode(vae, rows[chunk], device)
        for offset, row in enumerate(chunk):
            means[row], stds[row] = mean[offset], std[offset]
            if disk is not None:
                disk.save(keys[row], mean[offset], std[offset])
    return torch.stack(means), torch.stack(stds)
