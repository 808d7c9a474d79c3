"""Where paths that arrive from the tab or the REST API may point.

Concept folders, concepts files, sample templates and sources must lie under the models root (the
Dreambooth models folder and the checkpoint folder included) or under a data root the user listed:
`serve --data-root DIR` (env DREAMBOOTH_DATA_ROOTS, os.pathsep-separated) or, in the WebUI, Settings →
Dreambooth → Data roots. Symlinks are resolved before the check, and the one error is the same whether
the path exists or not, so a caller learns nothing about files outside.

The CLI, run by the machine's own user, is not checked: callers are api.py and the tab's handlers, never
the core library.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from . import host
from ..errors import DreamboothError

DATA_ROOTS_ENV = "DREAMBOOTH_DATA_ROOTS"
DATA_ROOTS_SETTING = "dreambooth_tab_data_roots"
CONCEPT_PATH_FIELDS = ("instance_data_dir", "class_data_dir", "save_sample_template")


def _split(text: str) -> list[str]:
    parts = []
    for line in str(text or "").splitlines():
        parts += [part.strip() for part in line.split(os.pathsep) if part.strip()]
    return parts


def data_roots() -> list[Path]:
    """The listed data roots: env DREAMBOOTH_DATA_ROOTS and the WebUI setting, resolved."""
    listed = _split(os.environ.get(DATA_ROOTS_ENV, "")) + _split(host.host_option(DATA_ROOTS_SETTING, ""))
    return [Path(item).expanduser().resolve() for item in listed]


def allowed_roots() -> list[Path]:
    roots = [host.models_root(), host.dreambooth_root(), host.checkpoint_dir()] + data_roots()
    return [Path(root).resolve() for root in roots]


def _refusal(field: str) -> DreamboothError:
    return DreamboothError(
        f"{field}: this path is not allowed here: from the tab and the API, only files and folders under the "
        "models folder or a data root can be used (add one with `serve --data-root DIR` or, in the WebUI, "
        "Settings > Training > Dreambooth tab > Data roots)", field=field)


def check_path(value, field: str, base: Path | None = None,
               also_allowed: Callable[[], Iterable[Path]] = tuple) -> Path | None:
    """The resolved path of `value` if it lies under an allowed root (None for an empty value).

    Relative paths resolve against `base` (default: the current folder, as the core would read them).
    `also_allowed()` names single files allowed wherever they are; asked only for a path outside the roots.
    """
    text = str(value or "").strip()
    if not text:
        return None
    try:
        path = Path(text).expanduser()
        resolved = (path if path.is_absolute() else (base or Path.cwd()) / path).resolve()
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a symlink loop, a NUL: refused like the rest
        raise _refusal(field) from None
    if any(resolved == root or root in resolved.parents for root in allowed_roots()):
        return resolved
    if resolved in set(also_allowed()):
        return resolved
    raise _refusal(field)


def check_source(value) -> Path:
    """A Create source from the tab or the API: a name in the checkpoint folder, or a path under the roots."""
    text = str(value or "").strip()
    if not text:
        raise DreamboothError("source is empty: choose a .safetensors/.ckpt file or a diffusers folder", field="source")
    # what the Source list offers is allowed: the WebUI's own list (e.g. its --ckpt file, set on the trusted
    # command line) may name files outside the models folder
    return check_path(text, "source", base=host.checkpoint_dir(), also_allowed=host.list_source_checkpoints)


def _check_concept(values: dict, where: str) -> None:
    for name in CONCEPT_PATH_FIELDS:
        check_path(values.get(name), f"{where}.{name}")


def check_config(cfg) -> None:
    """Every path a TrainConfig names: concept folders and templates, the concepts file and its concepts."""
    for index, concept in enumerate(cfg.concepts_list):
        if isinstance(concept, dict):
            _check_concept(concept, f"concepts_list[{index}]")
    check_path(cfg.pretrained_vae_name_or_path, "pretrained_vae_name_or_path")
    source = str(cfg.concepts_path or "").strip()
    if source and not source.startswith("["):
        check_path(source, "concepts_path")
    if cfg.use_concepts and source:
        for index, concept in enumerate(cfg.concepts()):  # the file's relative folders resolve against it
            _check_concept(concept.values, f"concepts_path[{index}]")
