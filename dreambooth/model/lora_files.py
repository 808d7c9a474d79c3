"""Where LoRA files go and which one `lora_model_name` means.

Output: `<Lora folder>/NAME_<step>.safetensors` (the WebUI's Lora folder, `--lora-dir` when the host has
one; standalone `<models root>/Lora`), or the model's own `lora/` folder when save_lora_for_extra_net is off.
`lora_model_name` arrives from the tab, the REST API or a db_config.json: it may only name a file inside
one of those two folders (a relative name, symlinks resolved), never a path elsewhere.
"""
from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..errors import DreamboothError, shorten
from ..platform import host
from ..store import ModelDir

LORA_SUFFIX = ".safetensors"


def output_folder(model: ModelDir, cfg: TrainConfig) -> Path:
    return host.lora_dir() if cfg.save_lora_for_extra_net else model.loras


def output_path(model: ModelDir, cfg: TrainConfig, revision: int) -> Path:
    return output_folder(model, cfg) / f"{model.name}_{revision}{LORA_SUFFIX}"


def _folders(model: ModelDir | None) -> list[Path]:
    return [host.lora_dir()] + ([model.loras] if model is not None else [])


def list_lora_files(model: ModelDir | None = None) -> list[str]:
    """Names a Lora Model selector offers: files in the Lora folder (sub-folders too, as the WebUI lists
    them), then the model's own lora/ folder; temporary files of an unfinished write are left out."""
    names: list[str] = []
    for folder in _folders(model):
        if folder.is_dir():
            found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob(f"*{LORA_SUFFIX}")
                           if p.is_file() and not p.name.startswith("."))
            names += [name for name in found if name not in names]
    return names


def resolve_lora_file(name: str, model: ModelDir | None = None) -> Path:
    """The file `lora_model_name` names, or an error naming the field and what is available."""
    text = str(name or "").strip()
    if not text:
        raise DreamboothError("lora_model_name is empty: choose a LoRA file", field="lora_model_name")
    relative = text if text.endswith(LORA_SUFFIX) else text + LORA_SUFFIX
    for folder in _folders(model):
        try:
            root = folder.resolve()
            candidate = (root / relative).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return candidate
        except (OSError, ValueError, RuntimeError):  # a NUL, a name too long, a symlink loop: not a LoRA here
            continue
    offered = list_lora_files(model)
    where = " or ".join(str(folder) for folder in _folders(model))
    raise DreamboothError(
        f"lora_model_name {shorten(text)} is not a LoRA file in {where}; "
        + (f"choose one of: {', '.join(offered[:8])}" if offered else "there are none yet: train with use_lora first"),
        field="lora_model_name")


def newest_model_lora(model: ModelDir, cfg: TrainConfig) -> Path | None:
    """This model's LoRA file with the highest step in its output folder (for Generate Ckpt after a run)."""
    folder = output_folder(model, cfg)
    best, best_step = None, -1
    prefix = f"{model.name}_"
    for path in folder.glob(f"{prefix}*{LORA_SUFFIX}") if folder.is_dir() else ():
        step = path.name[len(prefix):-len(LORA_SUFFIX)]
        if step.isdigit() and int(step) > best_step:
            best, best_step = path, int(step)
    return best
