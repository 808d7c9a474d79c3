"""Standalone: `python -m dreambooth` serves the tab on 127.0.0.1:7860 with the REST routes beside it.

One login (`--api-auth user:pass`, or env DREAMBOOTH_API_AUTH) guards everything the server answers: the
page, Gradio's API and file routes (Gradio's own login, a cookie) and the REST routes (HTTP Basic).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..platform import host
from ..errors import DreamboothError
from ..platform.pathpolicy import DATA_ROOTS_ENV

STYLE_CSS = Path(__file__).resolve().parents[2] / "style.css"


def build_app(css: str | None = None):
    """The standalone page: the same tab the WebUI shows, plus css (a host brings its own)."""
    from .tab import build_tab

    if css is None and STYLE_CSS.is_file():
        css = STYLE_CSS.read_text(encoding="utf-8")
    return build_tab(standalone=True, css=css), css


def prepare_sources() -> None:
    """With an empty checkpoint folder, provide the embedded tiny checkpoint so Create works at once."""
    from ..service import operations

    if operations.list_source_checkpoints():
        return
    try:
        path = operations.ensure_embedded_source()
    except Exception as error:  # the tab still serves; Create then lists no sources
        print(f"dreambooth: could not write the tiny demo checkpoint: {type(error).__name__}: {error}")
        return
    print(f"dreambooth: no source checkpoints in {host.checkpoint_dir()}; added the tiny demo {path.name}")


def parse_auth(text: str | None) -> dict[str, str]:
    """"user:pass[,user2:pass2]" -> {user: password}; a malformed value is an error, never an open server."""
    items = [item for item in (text or "").split(",") if item.strip()]
    users = host.parse_api_auth(text)
    if len(users) != len(items) or not all(users.values()):
        raise DreamboothError("--api-auth / DREAMBOOTH_API_AUTH: expected user:password[,user2:password2] with a "
                              "name and a password in each", field="api_auth")
    return users


def add_data_roots(folders) -> None:
    """Allow the tab and the API to use these folders too (pathpolicy), via env DREAMBOOTH_DATA_ROOTS."""
    roots = [r for r in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    for folder in folders or []:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise DreamboothError(f"--data-root {folder}: not a folder", field="data_root")
        roots.append(str(path))
    if roots:
        os.environ[DATA_ROOTS_ENV] = os.pathsep.join(roots)


def listen_warning(port: int) -> str:
    return (f"warning: --listen without --api-auth: anyone who can reach this machine on port {port} can use the "
            "tab and its API without a login — create and train models, overwrite checkpoints, read the images "
            "and samples under the models folder and data roots. Set --api-auth user:password (or "
            "DREAMBOOTH_API_AUTH).")


def serve(port: int = 7860, listen: bool = False, models_dir: str | os.PathLike | None = None,
          block: bool = True, auth: str | None = None, data_roots=None):
    """Serve until interrupted (block=False returns the launched Blocks, for tests).

    `auth`: "user:pass[,user2:pass2]" required by the page, Gradio's routes and the REST routes."""
    from ..api import register_routes
    from . import compat

    users = parse_auth(auth if auth is not None else host.host_api_auth())  # standalone: DREAMBOOTH_API_AUTH
    add_data_roots(data_roots)
    if models_dir:
        os.environ[host.MODELS_DIR_ENV] = str(Path(models_dir).expanduser().resolve())
    host.models_root().mkdir(parents=True, exist_ok=True)
    prepare_sources()
    blocks, css = build_app()
    compat.enable_queue(blocks)
    address = "0.0.0.0" if listen else "127.0.0.1"
    if listen and not users:
        print(listen_warning(port), file=sys.stderr, flush=True)
    compat.launch(blocks, address, port, css=css, allowed_paths=[host.models_root()], prevent_thread_lock=True,
                  auth=list(users.items()) or None)
    register_routes(compat.served_app(blocks), api_auth=",".join(f"{u}:{p}" for u, p in users.items()) or None)
    print(f"dreambooth: serving on http://{address}:{port} (models: {host.models_root()}"
          f"{', login required' if users else ''})", flush=True)
    if not block:
        return blocks
    try:
        blocks.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        blocks.close()
    return blocks
