"""Platform adapter: where things live and what the host offers.

Standalone, paths come from the environment or the current folder. Inside the WebUI (its `modules`
package already imported) the adapter asks the host. This is the only module that knows about the WebUI,
and every WebUI import stays inside a function (nothing here slows the WebUI's start).

Host APIs used (host-webui.md): modules.paths_internal.models_path; modules.shared.cmd_opts
(.dreambooth_tab_models_path from preload.py, .ckpt_dir, .lora_dir, .api_auth), shared.opts.<key>; modules.sd_models (.model_path,
.list_models(), .checkpoints_list, .model_data.sd_model, .unload_model_weights(),
.send_model_to_device(), .reload_model_weights()); modules.call_queue.queue_lock.
Never shared.sd_model: reading it starts a model load.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Iterator

MODELS_DIR_ENV = "DREAMBOOTH_MODELS_DIR"
API_AUTH_ENV = "DREAMBOOTH_API_AUTH"  # standalone: "user:password[,user2:password2]"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")

log = logging.getLogger("dreambooth")
_STANDALONE_LOCK = threading.RLock()
_lock_holder = threading.local()  # .depth > 0 while this thread holds the generation lock


def is_hosted() -> bool:
    """True inside the WebUI: it has imported its own `modules.shared` before any extension runs."""
    return sys.modules.get("modules.shared") is not None


def _cmd_opt(name: str):
    if not is_hosted():
        return None
    from modules import shared

    return getattr(getattr(shared, "cmd_opts", None), name, None)


def models_root() -> Path:
    """The folder holding `dreambooth/` and `Stable-diffusion/`.

    Order: env DREAMBOOTH_MODELS_DIR, the WebUI's models folder (--models-dir / --data-dir), else ./models.
    """
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    webui_models = _webui_models_path()
    if webui_models is not None:
        return webui_models
    return (Path.cwd() / "models").resolve()


def dreambooth_root() -> Path:
    """Dreambooth models: --dreambooth-tab-models-path (preload.py) when hosted and given, else <models>/dreambooth."""
    flag = _cmd_opt("dreambooth_tab_models_path")
    if flag:
        return Path(flag).expanduser().resolve()
    return models_root() / "dreambooth"


def checkpoint_dir() -> Path:
    """Where Generate Ckpt writes single-file checkpoints.

    Hosted: --ckpt-dir when given (the WebUI also lists checkpoints there), else sd_models.model_path
    (<models>/Stable-diffusion). Standalone (or env DREAMBOOTH_MODELS_DIR): <models root>/Stable-diffusion.
    """
    if is_hosted() and not os.environ.get(MODELS_DIR_ENV, "").strip():
        ckpt_dir = _cmd_opt("ckpt_dir")
        if ckpt_dir:
            return Path(ckpt_dir).expanduser().resolve()
        from modules import sd_models

        return Path(sd_models.model_path).resolve()
    return models_root() / "Stable-diffusion"


def lora_dir() -> Path:
    """The WebUI's Lora folder, where txt2img's Lora tab lists LoRA files: its --lora-dir when given (the
    built-in Lora extension's flag), else <models root>/Lora (also standalone)."""
    if is_hosted() and not os.environ.get(MODELS_DIR_ENV, "").strip():
        flag = _cmd_opt("lora_dir")
        if flag:
            return Path(flag).expanduser().resolve()
    return models_root() / "Lora"


def refresh_checkpoints() -> None:
    """Ask the host to rescan its checkpoint list so a new file is selectable at once (no-op standalone).

    The host's rescan empties the list before refilling it, so a txt2img request arriving in between
    fails with "No checkpoints found": the rescan runs under the generation lock, which every generation
    holds. Off when the setting "dreambooth_tab_refresh_checkpoints" is off.
    """
    if not is_hosted() or not host_option("dreambooth_tab_refresh_checkpoints", True):
        return
    try:
        from modules import sd_models

        with generation_lock():
            sd_models.list_models()
    except Exception as error:  # never fail a finished export because the host could not rescan
        log.warning("dreambooth: could not refresh the WebUI's checkpoint list: %s", error)


def list_source_checkpoints() -> list[Path]:
    """Single-file checkpoints a model can be created from: files under checkpoint_dir(), and hosted also
    the WebUI's list (its --ckpt file, other folders). The host's list is a cache filled at start and by its
    own refresh, so a file copied in since is found by the scan without asking the host to rescan."""
    files = set()
    if is_hosted():
        from modules import sd_models

        files = {Path(info.filename).resolve() for info in list(sd_models.checkpoints_list.values())}
    folder = checkpoint_dir()
    if folder.is_dir():
        files |= {p.resolve() for p in folder.rglob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file()}
    return sorted(files, key=lambda p: str(p).lower())


def _loaded_model():
    """The WebUI's loaded model or None, read without triggering a load (never shared.sd_model)."""
    from modules import sd_models

    return getattr(getattr(sd_models, "model_data", None), "sd_model", None)


def _unload(sd_models, model) -> None:
    fn = sd_models.unload_model_weights
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "sd_model" in params:  # A1111 / Forge: passing the model avoids `sd_model or shared.sd_model`
        fn(sd_model=model)
    elif "op" in params:  # SD.Next
        fn(op="model")
    else:
        fn()


@contextlib.contextmanager
def vram_released(enabled: bool | None = None) -> Iterator[bool]:
    """Move the WebUI's loaded model off the GPU for the block, and back afterwards.

    Yields whether a model was unloaded. A no-op standalone, when disabled, or when nothing is loaded
    (the guard: unloading with nothing loaded would make the WebUI load a model first).
    `enabled` None = the setting "dreambooth_tab_unload_host_model" (default on).
    """
    if enabled is None:
        enabled = bool(host_option("dreambooth_tab_unload_host_model", True))
    if not enabled or not is_hosted():
        yield False
        return
    unloaded = False
    try:
        from modules import sd_models

        model = _loaded_model()
        if model is not None:
            _unload(sd_models, model)
            unloaded = True
            log.info("dreambooth: moved the WebUI's model off the GPU for training")
    except Exception as error:
        log.warning("dreambooth: could not unload the WebUI's model: %s", error)
    try:
        yield unloaded
    finally:
        if unloaded:
            _restore()


def _restore() -> None:
    try:
        from modules import sd_models

        model = _loaded_model()
        if model is not None:
            sd_models.send_model_to_device(model)
        elif hasattr(sd_models, "reload_model_weights"):  # SD.Next drops the model: load it again
            sd_models.reload_model_weights()
        log.info("dreambooth: the WebUI's model is back on its device")
    except Exception as error:
        log.warning("dreambooth: could not bring the WebUI's model back (select it again in txt2img): %s", error)


def _host_queue_lock():
    if not is_hosted():
        return None
    from modules import call_queue

    return call_queue.queue_lock


@contextlib.contextmanager
def generation_lock(on_wait=None) -> Iterator[None]:
    """Hold the WebUI's generation queue lock (txt2img/img2img wait), or a package lock standalone.

    The host's lock is not re-entrant, so a thread that already holds it through this function (a
    training job exporting a checkpoint) just goes on. `on_wait(message)` is called when the lock is
    busy before blocking on it.
    """
    if getattr(_lock_holder, "depth", 0):
        _lock_holder.depth += 1
        try:
            yield
        finally:
            _lock_holder.depth -= 1
        return
    lock = _host_queue_lock() or _STANDALONE_LOCK
    if not lock.acquire(blocking=False):
        if on_wait is not None:
            on_wait("waiting for the WebUI to finish its current generation (txt2img, img2img, ...); "
                    "training starts right after" if is_hosted() else "waiting for the running generation to finish")
        lock.acquire()
    _lock_holder.depth = 1
    try:
        yield
    finally:
        _lock_holder.depth = 0
        lock.release()


def host_api_auth() -> str | None:
    """The HTTP Basic logins the REST routes must require: "user:pass[,user2:pass2]", None = open.

    Hosted: the WebUI's --api-auth. Standalone: env DREAMBOOTH_API_AUTH, same format.
    """
    text = _cmd_opt("api_auth") if is_hosted() else os.environ.get(API_AUTH_ENV)
    return text.strip() or None if isinstance(text, str) else None


def parse_api_auth(text: str | None) -> dict[str, str]:
    """"user:pass[,user2:pass2]" -> {user: password} ({} = no auth)."""
    credentials = {}
    for item in (text or "").split(","):
        user, sep, password = item.strip().partition(":")
        if sep and user:
            credentials[user] = password
    return credentials


def api_credentials() -> dict[str, str]:
    """host_api_auth() parsed: user -> password ({} = no auth)."""
    return parse_api_auth(host_api_auth())


def check_api_auth(username: str | None, password: str | None, credentials: dict[str, str] | None = None) -> bool:
    """Constant-time check of HTTP Basic credentials against `credentials` (default: the host's);
    True when no auth is set."""
    credentials = api_credentials() if credentials is None else credentials
    if not credentials:
        return True
    expected = credentials.get(username or "")
    return expected is not None and secrets.compare_digest(expected.encode(), (password or "").encode())


def host_option(key: str, default):
    """A WebUI setting (shared.opts.<key>, from the Dreambooth settings section); `default` standalone."""
    if not is_hosted():
        return default
    from modules import shared

    return getattr(shared.opts, key, default)


def other_dreambooth_extensions() -> list[tuple[str, Path]]:
    """Other enabled WebUI extensions that train Dreambooth (the older sd_dreambooth_extension, forks):
    (folder name, path). Empty standalone."""
    if not is_hosted():
        return []
    try:
        from modules import extensions
    except ImportError:
        return []
    ours = Path(__file__).resolve().parents[2]  # <extension>/dreambooth/platform/host.py
    found = []
    for ext in extensions.active():
        path = Path(ext.path).resolve()
        if path != ours and ("dreambooth" in ext.name.lower() or (path / "dreambooth").is_dir()):
            found.append((ext.name, path))
    return found


def _webui_models_path() -> Path | None:
    if not is_hosted():
        return None
    try:
        from modules import paths_internal  # the WebUI's own package; absent standalone
    except ImportError:
        return None
    return Path(paths_internal.models_path).resolve()
