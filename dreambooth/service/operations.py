"""The operations every interface offers (CLI, tab, REST): one place, one behaviour.

Each takes a model name, checks it, and raises DreamboothError with a readable message on bad input.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from ..platform import host
from ..config import TrainConfig, load_config, save_config
from ..errors import DreamboothError, shorten
from ..platform.fsutil import atomic_dir, atomic_write_json
from ..platform.leftovers import is_hidden, is_temp_name, remove_stale_temps
from ..platform.modellock import LOCK_FILE, is_main_process, model_lock
from ..store import ModelDir, list_models, model_dir

EMBEDDED_CHECKPOINT = "dreambooth-tiny-demo.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")

__all__ = ["create_model", "load_params", "save_params", "train_model", "generate_ckpt", "generate_samples",
           "newest_snapshot",
           "list_models", "list_source_checkpoints", "ensure_embedded_source", "demo_instance_dir"]


def resolve_source(source: str | Path, hub_token: str | None = None,
                   progress: Callable[[str], None] = print) -> Path:
    """A path, the name of a file in the checkpoint folder (what the tab's dropdown offers), or a Hugging
    Face Hub model id (org/name) when no such file exists (convert/hub.py)."""
    text = str(source or "").strip()
    if not text:
        raise DreamboothError("source checkpoint is empty: choose a .safetensors/.ckpt file or a diffusers folder",
                              field="source")
    path = Path(text).expanduser()
    if not path.exists() and not path.is_absolute() and (host.checkpoint_dir() / text).exists():
        path = host.checkpoint_dir() / text
    if not path.exists():
        from ..convert.hub import is_hub_id, resolve_hub_model

        if is_hub_id(text) and not path.is_absolute():
            return resolve_hub_model(text, hub_token, progress)
        raise DreamboothError(f"source checkpoint {shorten(text)} does not exist", field="source")
    return path.resolve()


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def locked(model: ModelDir, action: str, log: Callable[[str], None] = _warn) -> Iterator[None]:
    """Hold the model's lock (modellock) and remove the temporary files an interrupted run left.

    Only the main process of a data-parallel run locks: the others write nothing."""
    if not is_main_process():
        yield
        return
    with model_lock(model.path, action):
        removed = remove_stale_temps(model.path, host.checkpoint_dir(), model.name, host.lora_dir())
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by an interrupted run: "
                + ", ".join(p.name for p in removed[:5]) + (" …" if len(removed) > 5 else ""))
        yield


def _folder_in_use(model: ModelDir) -> bool:
    """The model folder holds something besides its lock file and temporary leftovers."""
    return model.path.is_dir() and any(p.name != LOCK_FILE and not is_temp_name(p.name) for p in model.path.iterdir())


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def create_model(name: str, source: str | Path, progress: Callable[[str], None] = print,
                 model_type: str | None = None, hub_token: str | None = None) -> ModelDir:
    """Extract `source` into models/dreambooth/<name>/working with a fresh db_config.json (all or nothing).

    `source` may be a Hugging Face Hub id (`hub_token` for private or gated ones). `model_type` ("v1x",
    "v2x-512", "v2x", "SDXL") overrides the detected type; the resolution starts at the type's native size
    (768 for v2x, 1024 for SDXL)."""
    model = model_dir(name)
    if model.exists() or _folder_in_use(model):
        raise DreamboothError(f"a model named '{model.name}' already exists: choose another name", field="model_name")
    path = resolve_source(source, hub_token, progress)
    from ..convert.create import create_working
    from ..platform.diskspace import require_space

    require_space(model.path.parent, _size(path), f"writing {model.name}/")  # before any folder is made
    with locked(model, "create"):
        try:
            with atomic_dir(model.path, need=_size(path)) as tmp:
                if _folder_in_use(model):  # another process created it meanwhile
                    raise DreamboothError(f"a model named '{model.name}' already exists: choose another name",
                                          field="model_name")
                info = create_working(path, tmp / "working", progress=progress, model_type=model_type)
                cfg = TrainConfig({"model_name": model.name, "src": str(path),
                                   "model_type": info.get("model_type", "v1x"),
                                   "resolution": info.get("resolution", 512)})
                save_config(cfg, tmp / "db_config.json")
        except BaseException:
            if model.path.is_dir() and not _folder_in_use(model):  # a failed Create leaves no folder behind
                shutil.rmtree(model.path)
            raise
    progress(f"created model '{model.name}' from {path.name} in {model.path}")
    return model


def load_params(name: str) -> tuple[TrainConfig, list[str]]:
    model = model_dir(name).require()
    return load_config(model.config_file)


def save_params(name: str, cfg: TrainConfig) -> Path:
    model = model_dir(name).require()
    cfg.model_name = model.name
    with locked(model, "params"):
        save_config(cfg, model.config_file)
    return model.config_file


def _backup_params(model: ModelDir, cfg: TrainConfig) -> None:
    atomic_write_json(model.backups / f"db_config_{cfg.revision}.json", cfg.to_dict())


def preflight(cfg: TrainConfig) -> int:
    """What a training start can check at once (tab, REST, CLI): the concept folders and the attention
    choice. Returns the number of instance images."""
    import torch

    from ..data.dataset import check_concepts
    from ..model.attention import check_attention

    count = check_concepts(cfg.concepts())
    check_attention(cfg.attention, "cuda" if torch.cuda.is_available() else "cpu")
    return count


def train_model(name: str, cfg: TrainConfig | None = None, control=None, resume: bool = False):
    """Train with `cfg` (default: the saved params), saving those params first so the run is reproducible."""
    from ..train.loop import Trainer

    model = model_dir(name).require()
    if cfg is None:
        cfg, _ = load_config(model.config_file)
    preflight(cfg)  # bad folders fail before anything is written (the lock file included)
    with locked(model, "train", control.log if control is not None else _warn):
        cfg.model_name = model.name
        if is_main_process():
            save_config(cfg, model.config_file)
            _backup_params(model, cfg)
        return Trainer(model, cfg, control, resume).run()


def generate_ckpt(name: str, half: bool | None = None, subdir: bool | None = None,
                  overrides: dict | None = None) -> Path:
    """`overrides`: parameters as on screen or in the request (e.g. lora_model_name, lora_weight), checked
    like any other value and not saved."""
    from ..model.publish import publish_working

    model = model_dir(name).require()
    with locked(model, "Generate Ckpt"):
        cfg, _ = load_config(model.config_file)
        for key, value in (overrides or {}).items():
            cfg.set(key, value)
        return publish_working(model, cfg, half, subdir)


def generate_samples(name: str, cfg: TrainConfig | None = None, control=None) -> list[Path]:
    """Previews from the saved working weights, outside training; with the LoRA Generate Ckpt would merge
    (lora_model_name, or this model's newest after a use_lora run) merged in at lora_weight."""
    from ..convert.diffusers_io import load_components
    from ..data.captions import build_caption
    from ..data.dataset import check_concepts
    from ..data.images import find_images
    from ..model.long_prompts import prompt_layout
    from ..model.publish import chosen_lora, merge_lora
    from ..model.sampling import (build_pipeline, long_prompt_embeddings, render_samples, sample_requests,
                                  sanity_requests)

    model = model_dir(name).require()
    if cfg is None:
        cfg, _ = load_config(model.config_file)
    log = control.log if control is not None else print
    concepts = cfg.concepts()
    check_concepts(concepts)
    # the default sample prompt is each concept's first caption: only file names are needed, no decoding
    first_captions = {index: build_caption(c.instance_prompt, find_images(c.instance_data_dir)[0], c.instance_token,
                                           c.class_token) for index, c in enumerate(concepts)}
    requests = sample_requests(concepts, first_captions) + sanity_requests(cfg.sanity_prompt, cfg.sanity_seed, concepts)
    if not requests:
        raise DreamboothError("no samples requested: set n_save_sample to 1 or more", field="n_save_sample")
    lora = chosen_lora(model, cfg)  # refused here, before any model is loaded
    import gc

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # like training: txt2img waits, and the WebUI's model leaves the GPU while ours is there (then returns)
    with host.generation_lock(on_wait=log), host.vram_released():
        parts = list(load_components(model.working))
        if lora is not None:
            merge_lora(model, lora, cfg.lora_weight, parts[0], parts[2])
            log(f"samples with LoRA {lora.name} merged at weight {cfg.lora_weight:g}")
        if cfg.pretrained_vae_name_or_path.strip():
            from ..model.publish import alternate_vae

            parts[1] = alternate_vae(model, cfg)
        _place(parts[:3], device, sample_dtype(cfg.mixed_precision, device))
        pipeline = build_pipeline(*parts[:4], dict(parts[4]), cfg.scheduler)
        try:
            long_prompts = long_prompt_embeddings(prompt_layout(parts[3], cfg), parts[2], cfg.clip_skip, device)
            written = render_samples(pipeline, requests, cfg.resolution, model.samples,
                                     f"{cfg.revision}-manual" + ("-lora" if lora else ""), device,
                                     clip_skip=cfg.clip_skip, long_prompts=long_prompts,
                                     progress=(lambda text: control.update(detail=text)) if control else None)
        finally:  # free the pipeline before the WebUI's model comes back
            del pipeline, parts
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    log(f"saved {len(written)} sample(s) in {model.samples}")
    return written


def _place(modules, device, dtype) -> None:
    for module in modules:
        module.to(device, dtype=dtype)


def sample_dtype(mixed_precision: str, device: str):
    """Samples outside training on a GPU in half precision (half the VRAM of fp32): bf16 when chosen and
    supported, else fp16; fp32 on a CPU, where half precision is slow or unsupported."""
    import torch

    if device != "cuda":
        return torch.float32
    if mixed_precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def list_source_checkpoints() -> list[Path]:
    lister = getattr(host, "list_source_checkpoints", None)
    if lister is not None:
        found = lister()
    else:
        folder = host.checkpoint_dir()
        found = sorted(p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()) \
            if folder.is_dir() else []
    return [Path(p) for p in found if not is_hidden(p)]  # temporary files of a save in progress, dotfiles


def ensure_embedded_source() -> Path:
    """Standalone newcomers get the embedded tiny checkpoint as a source when they have none."""
    from ..model.tiny import write_tiny_checkpoint

    path = host.checkpoint_dir() / EMBEDDED_CHECKPOINT
    if not path.exists():
        write_tiny_checkpoint(path)
    return path


def demo_instance_dir() -> Path:
    """The generated demo instance images (written once under the models root)."""
    from ..model.tiny import write_demo_images

    folder = host.models_root() / "dreambooth_demo_images"
    if not folder.is_dir() or not any(folder.glob("*.png")):
        write_demo_images(folder)
    return folder


def newest_snapshot(name: str) -> Path | None:
    """The resume snapshot `train --resume` would continue from, or None."""
    from ..train.snapshot import latest_snapshot

    model = model_dir(name)
    return latest_snapshot(model.snapshots, model.older_snapshots)


def remove_model(name: str) -> None:
    model = model_dir(name)
    if model.path.exists():
        with locked(model, "remove"):
            shutil.rmtree(model.path)


def describe(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
