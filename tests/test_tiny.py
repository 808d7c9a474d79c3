"""The embedded tiny model, its checkpoint, the demo images and the CLIP tokenizer (offline, real models)."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dreambooth.convert.checkpoint_io import load_state_dict  # noqa: E402
from dreambooth.errors import DreamboothError  # noqa: E402
from dreambooth.model.tiny import PRESET_RESOLUTION, build_components, write_demo_images, write_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


def test_checkpoint_layout_and_metadata(tiny_ckpt):
    tensors, metadata = load_state_dict(tiny_ckpt)
    assert metadata["dreambooth_preset"] == "tiny"
    configs = json.loads(metadata["dreambooth_configs"])
    assert configs["vae"]["block_out_channels"] == [32, 32, 64, 64]
    assert all(k.split(".")[0] in ("model", "first_stage_model", "cond_stage_model") for k in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point())


def test_same_seed_same_weights():
    a, b = build_components("tiny", seed=0), build_components("tiny", seed=0)
    c = build_components("tiny", seed=1)
    sa, sb, sc = a["unet"].state_dict(), b["unet"].state_dict(), c["unet"].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_shapes_match_sd_downscale():
    parts = build_components("tiny")
    size = PRESET_RESOLUTION["tiny"]
    with torch.no_grad():
        latents = parts["vae"].encode(torch.zeros(1, 3, size, size)).latent_dist.mean
        assert latents.shape == (1, 4, size // 8, size // 8)
        hidden = parts["text_encoder"](torch.tensor([[49406, 320, 49407]]))[0]
        assert parts["unet"](latents, 5, encoder_hidden_states=hidden).sample.shape == latents.shape
    assert parts["scheduler_config"]["beta_schedule"] == "scaled_linear"


def test_small_preset_size():
    parts = build_components("small")
    count = sum(p.numel() for p in parts["unet"].parameters())
    assert 17_000_000 < count < 18_500_000
    assert PRESET_RESOLUTION["small"] == 128


def test_unknown_preset():
    with pytest.raises(DreamboothError):
        build_components("huge")


def test_demo_images(tmp_path):
    from PIL import Image

    paths = write_demo_images(tmp_path / "demo", count=4, size=64, seed=3)
    assert len(paths) == 4 and all(p.suffix == ".png" for p in paths)
    images = [Image.open(p).convert("RGB") for p in paths]
    assert all(i.size == (64, 64) for i in images)
    assert images[0].tobytes() != images[1].tobytes()
    again = write_demo_images(tmp_path / "again", count=4, size=64, seed=3)
    assert again[2].read_bytes() == paths[2].read_bytes()
    assert not list((tmp_path / "demo").glob(".*"))  # no temporaries left


def test_clip_tokenizer_from_carried_bpe(tmp_path):
    from transformers import CLIPTokenizer

    from dreambooth.convert.tokenizer import write_clip_tokenizer

    folder = write_clip_tokenizer(tmp_path / "tok", use_cache=False)
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
