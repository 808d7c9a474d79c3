"""db_config.json's format version and the chain of migrations that brings any older file up to it.

A file without `format_version` is version 0: the older Dreambooth extension's layout (or ours before the
version existed, which is a subset of it). Each migration takes a raw dict at version N to N+1 and says what
it changed; `config.config_from_dict` runs the chain before reading a single field. A format change adds one
function here and bumps FORMAT_VERSION — nothing else needs to know the history.
"""
from __future__ import annotations

from typing import Any, Callable

from .errors import DreamboothError
from .registry import SAMPLERS

FORMAT_KEY = "format_version"
FORMAT_VERSION = 1

# Keys the older extension computed or kept for its own bookkeeping (in the file and in each concept):
# dropped without a warning, since nothing a user set is lost.
OLDER_BOOKKEEPING_KEYS = frozenset({"is_valid", "model_dir", "pretrained_model_name_or_path", "model_path",
                                    "lifetime_revision", "initial_revision", "v2", "has_ema"})
_OLDER_KEY_NAMES = {"deis_train_scheduler": "noise_scheduler"}
_OLDER_VALUE_NAMES = {
    "optimizer": {"8Bit Adam": "8bit AdamW", "AdamW": "Torch AdamW"},
    # its "default" was diffusers' default processor, which is PyTorch SDPA on torch 2; flash_attention it
    # replaced itself with its last choice
    "attention": {"default": "sdpa", "flash_attention": "sdpa"},
}
# Settings the older extension stored but never used: an older file's value says nothing about what its user
# wanted, so they start from our default (which a user then changes on purpose).
_OLDER_UNUSED = {"input_pertubation": False}


def _from_older_extension(data: dict[str, Any], known: Callable[[str], bool]) -> tuple[dict, list[str]]:
    """0 -> 1: the older extension's names. `db_`-prefixed keys lose the prefix where the rest is a field
    of ours; renamed keys and values get today's names; bookkeeping keys go."""
    migrated, notes = {}, []
    for key, value in data.items():
        name = key[3:] if key.startswith("db_") and known(key[3:]) else key
        name = _OLDER_KEY_NAMES.get(name, name)
        if name in OLDER_BOOKKEEPING_KEYS:
            continue
        renamed = _OLDER_VALUE_NAMES.get(name, {}).get(value) if isinstance(value, str) else None
        if name == "scheduler" and isinstance(value, str) and value not in SAMPLERS:
            renamed = _older_sampler(value)
        if name in _OLDER_UNUSED and value != _OLDER_UNUSED[name]:
            notes.append(f"{name}: had no effect in the older extension, so it starts off here "
                         f"(set it to {value!r} to use it)")
            value = _OLDER_UNUSED[name]
        if renamed is not None:
            notes.append(f"{name}: '{value}' is now called '{renamed}'")
            value = renamed
        if name == "concepts_list" and isinstance(value, list):
            value = [{k: v for k, v in concept.items() if k not in OLDER_BOOKKEEPING_KEYS}
                     if isinstance(concept, dict) else concept for concept in value]
        migrated[name] = value
    return migrated, notes


def _older_sampler(value: str) -> str:
    """The older extension matched sampler names case-insensitively ("ddim" was its default) and offered a
    few that need packages we do not install (LMS: scipy, DPMSolverSDE: torchsde): the nearest we have."""
    for name in SAMPLERS:
        if value.lower().removesuffix("scheduler") == name.lower():
            return name
    return "DPMSolverMultistep"


# MIGRATIONS[n] takes a file at version n to version n + 1
MIGRATIONS: list[Callable[[dict, Callable[[str], bool]], tuple[dict, list[str]]]] = [_from_older_extension]
assert len(MIGRATIONS) == FORMAT_VERSION, "one migration per format version"


def migrate(data: dict[str, Any], known: Callable[[str], bool]) -> tuple[dict[str, Any], list[str]]:
    """`data` brought to FORMAT_VERSION (without the version key), and notes on what changed.

    `known(name)` tells whether a name is one of today's fields (the registry), for renames that depend on it.
    """
    version = data.get(FORMAT_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DreamboothError(f"db_config.json: {FORMAT_KEY} must be a whole number, got {version!r}; "
                              f"remove the key to read the file as the oldest format", field=FORMAT_KEY)
    if version > FORMAT_VERSION:
        raise DreamboothError(
            f"db_config.json has {FORMAT_KEY} {version}, newer than this extension reads ({FORMAT_VERSION}): "
            "update the extension, or load a backup from the model's backups/ folder", field=FORMAT_KEY)
    data = {k: v for k, v in data.items() if k != FORMAT_KEY}
    notes: list[str] = []
    for step in MIGRATIONS[version:]:
        data, more = step(data, known)
        notes += more
    return data, notes


def stamped(values: dict[str, Any]) -> dict[str, Any]:
    """What save writes: the current format version first, then the values."""
    return {FORMAT_KEY: FORMAT_VERSION, **values}
