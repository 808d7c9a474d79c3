"""TrainConfig and Concept: values for the registry's fields, with coercion, validation and db_config.json I/O.

Values arrive as JSON (db_config.json, REST), as strings (CLI `--set key=value`) or from widgets. They are
coerced with the field's type and checked against its bounds; a problem names the field, the value and
what is allowed. Keys we do not know are kept and reported, never silently dropped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Iterable

from .errors import DreamboothError, shorten
from .migrations import OLDER_BOOKKEEPING_KEYS, migrate, stamped
from .platform.fsutil import atomic_write_json
from .store import check_model_name
from .registry import CONCEPT_FIELD_BY_NAME, CONCEPT_FIELDS, FIELD_BY_NAME, FIELDS, Field


def coerce(field: Field, raw: Any, where: str = "") -> Any:
    """Turn a JSON value or a string into the field's type, or raise naming the field."""
    name = f"{where}{field.name}"
    try:
        if field.kind is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, (int, float)) and raw in (0, 1):
                return bool(raw)
            text = str(raw).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if field.kind is int:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if field.kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        if field.kind is list:
            value = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(value, list):
                raise ValueError
            return value
        if raw is None:
            return ""
        if not isinstance(raw, str):  # {"instance_data_dir": 5} is a mistake, not the folder "5"
            raise TypeError
        return raw
    except (TypeError, ValueError, OverflowError, RecursionError, json.JSONDecodeError):
        raise DreamboothError(
            f"{name} = {shorten(raw)} is not a valid {field.kind.__name__}: expected {field.describe_range()}",
            field=name) from None


def check_bounds(field: Field, value: Any, where: str = "") -> None:
    name = f"{where}{field.name}"
    bad = (
        (field.choices is not None and value not in field.choices)
        or (field.minimum is not None and value < field.minimum)
        or (field.above is not None and value <= field.above)
        or (field.maximum is not None and value > field.maximum)
        or (field.multiple_of and value % field.multiple_of)
    )
    if bad:
        raise DreamboothError(f"{name} = {shorten(value)} is out of range: allowed {field.describe_range()}", field=name)


@dataclass
class Concept:
    values: dict[str, Any] = dc_field(default_factory=dict)

    def __post_init__(self):
        merged = {f.name: f.default for f in CONCEPT_FIELDS}
        merged.update(self.values)
        self.values = merged

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    @classmethod
    def from_dict(cls, data: dict, index: int, warnings: list[str] | None) -> "Concept":
        """`warnings` None: strict (what a user types now, CLI/REST/tab/concepts file): an unknown key is an
        error naming it and the allowed keys. A list: lenient (a saved db_config.json, perhaps from the
        older extension): the key is reported there and ignored."""
        if not isinstance(data, dict):
            raise DreamboothError(f"concepts_list[{index}] must be an object with concept fields, got {shorten(data)}",
                                  field="concepts_list")
        values = {}
        for key, raw in data.items():
            spec = CONCEPT_FIELD_BY_NAME.get(key)
            if spec is None:
                if key in OLDER_BOOKKEEPING_KEYS:  # an older concepts file pasted or pointed at
                    continue
                if warnings is None:
                    raise DreamboothError(
                        f"concepts_list[{index}]: unknown key '{key}'{_did_you_mean(key)}; allowed keys: "
                        f"{', '.join(CONCEPT_FIELD_BY_NAME)}", field=f"concepts_list[{index}].{key}")
                warnings.append(f"concepts_list[{index}]: unknown key '{key}' ignored")
                continue
            where = f"concepts_list[{index}]."
            values[key] = coerce(spec, raw, where)
            check_bounds(spec, values[key], where)
        return cls(values)

    def to_dict(self) -> dict:
        return dict(self.values)


class TrainConfig:
    """The settings of one model. Attribute access reads a field (`cfg.learning_rate`)."""

    def __init__(self, values: dict[str, Any] | None = None, extras: dict[str, Any] | None = None):
        self.__dict__["_values"] = {f.name: _copy_default(f.default) for f in FIELDS}
        self.__dict__["extras"] = dict(extras or {})  # unknown keys, written back unchanged
        for key, value in (values or {}).items():
            self.set(key, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value)

    def set(self, name: str, raw: Any) -> None:
        """Coerce and bounds-check one value. Unknown names are an error here (CLI/UI typos)."""
        spec = FIELD_BY_NAME.get(name)
        if spec is None:
            raise DreamboothError(f"unknown parameter {shorten(name)} (see `params NAME --show` for the list)",
                                  field=name)
        value = coerce(spec, raw)
        check_bounds(spec, value)
        if name == "concepts_list":
            concepts_from_list(value)  # validates every concept now, not at train time
        if name == "custom_model_name" and value.strip():  # becomes a file (and folder) name
            value = check_model_name(value, field=name)
        self._values[name] = value
        if name in ("use_concepts", "concepts_path") and self.use_concepts and self.concepts_path.strip():
            load_concepts_source(self.concepts_path)  # a bad concepts file fails here, not at train time

    def to_dict(self) -> dict[str, Any]:
        data = dict(self._values)
        data.update(self.extras)
        return data

    def concepts(self) -> list[Concept]:
        """The concepts to train: from concepts_path when use_concepts is set, else concepts_list."""
        if self.use_concepts and self.concepts_path.strip():
            return load_concepts_source(self.concepts_path)
        return concepts_from_list(self.concepts_list)


def _did_you_mean(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(CONCEPT_FIELD_BY_NAME), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _copy_default(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def concepts_from_list(items: Iterable, warnings: list[str] | None = None) -> list[Concept]:
    """Concepts from JSON objects; strict about unknown keys unless a `warnings` list collects them."""
    return [Concept.from_dict(item, i, warnings) for i, item in enumerate(items)]


def load_concepts_source(source: str) -> list[Concept]:
    """A concepts JSON file, or JSON text; relative folders in a file resolve against the file."""
    text = source.strip()
    base = None
    if not text.startswith("["):
        try:
            path = Path(text).expanduser()
            found = path.is_file()
        except (OSError, RuntimeError, ValueError):  # an unknown ~user, a name too long, a NUL
            found = False
        if not found:
            raise DreamboothError(f"concepts_path: {shorten(source)} is neither a file nor JSON text", field="concepts_path")
        text, base = path.read_text(encoding="utf-8"), path.parent
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise DreamboothError(f"concepts_path: not valid JSON ({error})", field="concepts_path") from None
    if not isinstance(items, list):
        raise DreamboothError("concepts_path: expected a JSON list of concepts", field="concepts_path")
    concepts = concepts_from_list(items)
    if base is not None:
        for concept in concepts:
            for key in ("instance_data_dir", "class_data_dir"):
                folder = concept.values[key]
                if folder and not Path(folder).expanduser().is_absolute():
                    concept.values[key] = str((base / folder).resolve())
    return concepts


def unknown_keys_summary(keys: list[str], shown: int = 6) -> str:
    """One line for any number of unknown keys (an older extension's file has dozens)."""
    names = ", ".join(f"'{key}'" for key in keys[:shown])
    more = f" and {len(keys) - shown} more (`python -m dreambooth params NAME --unknown` lists them)" \
        if len(keys) > shown else ""
    return f"{len(keys)} unknown key{'s' if len(keys) > 1 else ''} kept as is but not used: {names}{more}"


def config_from_dict(data: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """Build a config from a db_config.json object (ours or the older extension's).

    Older formats are migrated first (migrations.py). Returns the config and warnings (unknown keys, migrated
    values). Bad values raise DreamboothError.
    """
    if not isinstance(data, dict):
        raise DreamboothError("db_config.json must hold a JSON object")
    data, warnings = migrate(data, lambda name: name in FIELD_BY_NAME)
    known: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, raw in data.items():
        if key in FIELD_BY_NAME:
            known[key] = raw
        else:
            extras[key] = raw
    if extras:
        warnings.append(unknown_keys_summary(list(extras)))
    cfg = TrainConfig(extras=extras)
    for name, raw in known.items():
        if name == "concepts_list":
            cfg._values[name] = [c.to_dict() for c in concepts_from_list(coerce(FIELD_BY_NAME[name], raw), warnings)]
        elif name in ("use_concepts", "concepts_path"):  # a saved file must load even if its concepts file moved
            spec = FIELD_BY_NAME[name]
            cfg._values[name] = coerce(spec, raw)
        else:
            cfg.set(name, raw)
    return cfg, warnings


def load_config(path: Path) -> tuple[TrainConfig, list[str]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DreamboothError(f"{path} does not exist: save params first or create the model") from None
    except json.JSONDecodeError as error:
        raise DreamboothError(f"{path} is not valid JSON ({error}); fix or delete it") from None
    return config_from_dict(data)


def save_config(cfg: TrainConfig, path: Path) -> None:
    atomic_write_json(path, stamped(cfg.to_dict()))


def parse_assignments(assignments: Iterable[str]) -> dict[str, str]:
    """`key=value` strings from the CLI; lists and objects are JSON text."""
    parsed = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DreamboothError(f"--set expects key=value, got {shorten(item)}", field="--set")
        parsed[key.strip()] = value
    return parsed


def apply_assignments(cfg: TrainConfig, assignments: Iterable[str]) -> TrainConfig:
    for key, value in parse_assignments(assignments).items():
        cfg.set(key, value)
    return cfg
