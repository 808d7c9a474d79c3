"""Create from a Hugging Face Hub model id ("runwayml/stable-diffusion-v1-5"): the diffusers folder the
hub library keeps in its cache, downloaded when online, read from the local cache when offline.

Offline (HF_HUB_OFFLINE=1, how this project runs) nothing is fetched: the id must already be in the cache
(`models--org--name/snapshots/<revision>/` with `refs/main`). The token is passed to the hub library only,
never logged or saved.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from ..errors import DreamboothError, shorten

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# a diffusers Stable Diffusion folder: weights as safetensors, no duplicate formats
ALLOW = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]
IGNORE = ["*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.pb", "*.fp16.*", "*non_ema*"]


def is_hub_id(text: str) -> bool:
    """"org/name": two plain names (no path tricks: each starts with a letter or digit, no '..')."""
    text = (text or "").strip()
    return bool(_HUB_ID.match(text)) and ".." not in text


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """The hub cache as the environment names it now (the hub library reads it once, at its import)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.environ[name]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def resolve_hub_model(repo_id: str, token: str | None = None, progress: Callable[[str], None] = print) -> Path:
    """The local diffusers folder of `repo_id` (downloaded first when online)."""
    repo_id = (repo_id or "").strip()
    if not is_hub_id(repo_id):
        raise DreamboothError(f"hub model id {shorten(repo_id)} is not of the form org/name "
                              "(e.g. runwayml/stable-diffusion-v1-5)", field="hub_id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    local_only = offline()
    progress(f"{'reading the local Hugging Face cache for' if local_only else 'fetching'} {repo_id}")
    try:
        folder = Path(snapshot_download(repo_id, token=(token or "").strip() or None, cache_dir=cache_dir(),
                                        local_files_only=local_only, allow_patterns=ALLOW, ignore_patterns=IGNORE))
    except LocalEntryNotFoundError:
        where = cache_dir() or "the default Hugging Face cache (~/.cache/huggingface/hub)"
        raise DreamboothError(
            f"hub model {repo_id} is not in {where}" + (" and HF_HUB_OFFLINE is set, so nothing is downloaded: "
                                                        "download it on a connected machine or unset HF_HUB_OFFLINE"
                                                        if local_only else ""), field="hub_id") from None
    except HfHubHTTPError as error:  # not found, gated, bad token: the hub's own words, without the token
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = " (a private or gated model needs a token that has access)" if status in (401, 403) else ""
        raise DreamboothError(f"hub model {repo_id}: {str(error).splitlines()[0]}{hint}", field="hub_id") from None
    except OSError as error:  # no connection and no cache
        raise DreamboothError(f"hub model {repo_id} could not be fetched: {error}", field="hub_id") from None
    if not (folder / "model_index.json").is_file() or not (folder / "unet").is_dir():
        raise DreamboothError(f"hub model {repo_id} is not a diffusers Stable Diffusion folder (no model_index.json "
                              "and unet/): download its .safetensors file into the checkpoint folder instead",
                              field="hub_id")
    return folder
