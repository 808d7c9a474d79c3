"""Helpers for the data tests: tiny components without a model folder, and images of chosen sizes."""
from __future__ import annotations

from pathlib import Path

def write_image(path: Path, width: int, height: int, seed: int = 0, caption: str | None = None) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def pairs_for(folder: Path, prompt: str = "[filewords]", **concept):
    from dreambooth.config import concepts_from_list
    from dreambooth.data.dataset import collect_items

    concepts = concepts_from_list([{"instance_data_dir": str(folder), "instance_prompt": prompt, **concept}])
    return concepts, collect_items(concepts, lambda message: None)


def build(pairs, parts, resolution=64, **options):
    import torch

    from dreambooth.data.build import build_training_set

    unet, vae, text_encoder, tokenizer = parts
    options.setdefault("step", 32)
    return build_training_set(pairs, resolution, vae, text_encoder, tokenizer, torch.device("cpu"), **options)


def require_bitsandbytes_on_cpu():
    """Skip unless bitsandbytes can step an 8-bit optimizer here: releases before the CPU backend
    (0.45.5, the one that installs beside AUTOMATIC1111's torch 2.1.2) have GPU kernels only."""
    import pytest
    import torch

    bnb = pytest.importorskip("bitsandbytes")
    weight = torch.nn.Parameter(torch.ones(64))
    optimizer = bnb.optim.AdamW8bit([weight], lr=0.1)
    weight.sum().backward()
    try:
        optimizer.step()
    except Exception as error:  # the probe's only job: say why the 8-bit tests cannot run on this stack
        pytest.skip(f"bitsandbytes {bnb.__version__} cannot step on the CPU: {type(error).__name__}")
