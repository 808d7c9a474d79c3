"""A model's folder under `<models>/dreambooth/<name>/` and the rules for model names."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .platform import host
from .errors import DreamboothError, shorten

CONFIG_FILE = "db_config.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def check_model_name(name: str, field: str = "model_name") -> str:
    """A name is one plain folder name: letters, digits, '.', '_', '-', spaces; no path tricks."""
    name = (name or "").strip()
    what = "model name" if field == "model_name" else field
    if not name:
        raise DreamboothError(f"{what} is empty: enter a name for the model", field=field)
    if not _NAME_RE.match(name) or ".." in name:
        raise DreamboothError(
            f"{what} {shorten(name)} is not allowed: use letters, digits, '.', '_', '-' and spaces "
            "(no '/', '\\' or '..'), starting with a letter or digit", field=field)
    return name


@dataclass(frozen=True)
class ModelDir:
    name: str
    path: Path

    @property
    def working(self) -> Path:
        return self.path / "working"

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def logging(self) -> Path:
        return self.path / "logging"

    @property
    def snapshots(self) -> Path:
        """Resume snapshots (snapshot-<revision>/). Exported checkpoints go to the host's model folder."""
        return self.path / "snapshots"

    @property
    def older_snapshots(self) -> Path:
        """Where snapshots lived before (checkpoints/checkpoint-<revision>/): still read, never written."""
        return self.path / "checkpoints"

    @property
    def backups(self) -> Path:
        return self.path / "backups"

    @property
    def loras(self) -> Path:
        """LoRA files when save_lora_for_extra_net is off (else they go to the host's Lora folder)."""
        return self.path / "lora"

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    def classifiers(self, index: int) -> Path:
        return self.path / f"classifiers_{index}"

    def exists(self) -> bool:
        return self.working.is_dir() and self.config_file.is_file()

    def require(self) -> "ModelDir":
        if not self.exists():
            raise DreamboothError(
                f"model '{self.name}' does not exist under {self.path.parent}: create it first", field="model_name")
        return self


def model_dir(name: str, root: Path | None = None) -> ModelDir:
    name = check_model_name(name)
    base = (root or host.dreambooth_root()).resolve()
    path = (base / name).resolve()
    if path.parent != base:  # belt and braces: the name check should already prevent this
        raise DreamboothError(f"model name '{name}' escapes the models folder", field="model_name")
    return ModelDir(name, path)


def list_models(root: Path | None = None) -> list[str]:
    base = root or host.dreambooth_root()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / CONFIG_FILE).is_file() and (p / "working").is_dir())
