"""Shared fixtures: an isolated models root, the embedded tiny checkpoint and demo images (built once)."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_finish(session):
    # Importing pip (or finding its spec) switches off setuptools' distutils shim for the whole process;
    # on the CUDA torch builds a later `import diffusers` reaches setuptools through bitsandbytes and triton
    # and dies on the shim's assertion, failing every test after it (seen on the forge stack in CI).
    if "pip" in sys.modules:
        raise pytest.UsageError("a test module imported pip at collection: locate it with sysconfig instead")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from dreambooth.model.tiny import write_tiny_checkpoint

    path = tmp_path_factory.mktemp("sources") / "tiny.safetensors"
    write_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def sdxl_checkpoint(tmp_path_factory):
    """The embedded SDXL-shaped tiny checkpoint, as a single file (what a user picks as an SDXL source)."""
    from dreambooth.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("sdxl_source") / "tiny-sdxl.safetensors", preset="tiny-sdxl")


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory):
    from dreambooth.model.tiny import write_demo_images

    folder = tmp_path_factory.mktemp("demo_images")
    write_demo_images(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """(unet, vae, text_encoder, tokenizer) of the tiny preset, built in memory once."""
    from transformers import CLIPTokenizer

    from dreambooth.convert.tokenizer import write_clip_tokenizer
    from dreambooth.model.tiny import build_components

    parts = build_components("tiny")
    folder = write_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return parts["unet"], parts["vae"], parts["text_encoder"], CLIPTokenizer.from_pretrained(str(folder))


@pytest.fixture
def one_image(demo_images, tmp_path):
    """A folder holding only the first demo image (overfit and one-step cases)."""
    folder = tmp_path / "one"
    folder.mkdir()
    first = sorted(demo_images.glob("*.png"))[0]
    (folder / first.name).write_bytes(first.read_bytes())
    return folder


@pytest.fixture
def models_root(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(root))
    return root


@pytest.fixture
def tiny_model(models_root, tiny_checkpoint):
    """A freshly created model named 'tiny' under an isolated models root."""
    from dreambooth.service.operations import create_model

    return create_model("tiny", tiny_checkpoint, progress=lambda message: None)


def folder_weights(folder):
    """Every tensor of a working folder's UNet, VAE and text encoder, keyed "<component>/<name>"."""
    from dreambooth.convert.checkpoint_io import load_state_dict

    out = {}
    for name, file in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        out.update({f"{name}/{k}": v for k, v in load_state_dict(folder / name / f"{file}.safetensors")[0].items()})
    return out


def quick_config(instance_dir, **overrides):
    """Settings for fast CPU tests on the tiny model."""
    from dreambooth.config import TrainConfig

    values = {
        "num_train_epochs": 2, "save_embedding_every": 0, "save_preview_every": 0, "resolution": 64,
        "learning_rate": 1e-4, "lr_scheduler": "constant", "mixed_precision": "no", "seed": 42,
        "gradient_checkpointing": False,
        "concepts_list": [{"instance_data_dir": str(instance_dir), "instance_prompt": "a photo of sks toy",
                           "n_save_sample": 1, "sample_seed": 3, "save_infer_steps": 2}],
    }
    values.update(overrides)
    return TrainConfig(values)


@pytest.fixture(scope="session")
def fault_trials() -> int:
    """kill -9 trials for tests/test_faults.py: 20 where DREAMBOOTH_FULL_FAULTS=1 (test.sh: the first stack),
    else a 3-trial smoke run."""
    return 20 if os.environ.get("DREAMBOOTH_FULL_FAULTS") == "1" else 3
