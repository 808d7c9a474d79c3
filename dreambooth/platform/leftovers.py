"""Temporary files a killed save left behind: recognised by name, never listed, removed at the next command.

fsutil's atomic writers name them `.<target>.<random>.tmp[<suffix>]` (files and folders) and
`.<target>.<random>.old` (a replaced folder on its way out); the tokenizer writer uses `.<name>.tmp`.
They are removed under the model's lock (modellock), when no writer of that model can be running.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

TEMP_NAME = re.compile(r"^\..+\.(tmp|old)(\.[A-Za-z0-9]+)?$")


def is_temp_name(name: str) -> bool:
    return bool(TEMP_NAME.match(name))


def is_hidden(path: Path) -> bool:
    """A dotfile or a temporary name: never offered in a listing."""
    return Path(path).name.startswith(".")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_model_temps(folder: Path) -> list[Path]:
    """Remove every temporary file or folder anywhere under a model's folder."""
    removed = []
    for top, dirs, files in os.walk(folder):
        for name in [d for d in dirs if is_temp_name(d)] + [f for f in files if is_temp_name(f)]:
            _remove(Path(top) / name)
            removed.append(Path(top) / name)
        dirs[:] = [d for d in dirs if not is_temp_name(d)]
    return removed


def remove_checkpoint_temps(checkpoint_dir: Path, model_name: str) -> list[Path]:
    """Remove the temporary checkpoint files of `model_name` (`.<name>_<step>[_ema|_lora][_half].<ext>.<random>.tmp…`)
    from the checkpoint folder (or the Lora folder) and its `<name>/` subfolder; other models' files are not
    touched."""
    pattern = re.compile(rf"^\.{re.escape(model_name)}_\d+(_ema|_lora)?(_half)?\.(safetensors|ckpt)\..+")
    removed = []
    for folder in (Path(checkpoint_dir), Path(checkpoint_dir) / model_name):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if pattern.match(path.name) and is_temp_name(path.name):
                _remove(path)
                removed.append(path)
    return removed


def remove_create_temps(model_folder: Path) -> list[Path]:
    """Remove an interrupted Create's `.<name>.<random>.tmp|old` folders beside the model's folder."""
    folder = Path(model_folder)
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.[A-Za-z0-9_]+\.(tmp|old)$")
    found = [p for p in folder.parent.iterdir() if pattern.match(p.name)] if folder.parent.is_dir() else []
    for path in found:
        _remove(path)
    return found


def remove_stale_temps(model_folder: Path, checkpoint_dir: Path, model_name: str,
                       lora_dir: Path | None = None) -> list[Path]:
    """All of the above for one model (its LoRA files in `lora_dir` too); call only while holding its lock."""
    removed = remove_model_temps(model_folder) if Path(model_folder).is_dir() else []
    removed += remove_checkpoint_temps(lora_dir, model_name) if lora_dir is not None else []
    return removed + remove_create_temps(model_folder) + remove_checkpoint_temps(checkpoint_dir, model_name)
