"""Standalone: `python -m dreambooth` serves the tab on 127.0.0.1:7860 with the REST routes beside it."""
from __future__ import annotations

import os
from pathlib import Path

from .. import host

STYLE_CSS = Path(__file__).resolve().parents[2] / "style.css"


def build_app(css: str | None = None):
    """The standalone page: the same tab the WebUI shows, plus css (a host brings its own)."""
    from .tab import build_tab

    if css is None and STYLE_CSS.is_file():
        css = STYLE_CSS.read_text(encoding="utf-8")
    return build_tab(standalone=True, css=css), css


def prepare_sources() -> None:
    """With an empty checkpoint folder, provide the embedded tiny checkpoint so Create works at once."""
    from .. import actions

    if actions.list_source_checkpoints():
        return
    try:
        path = actions.ensure_embedded_source()
    except Exception as error:  # the tab still serves; Create then lists no sources
        print(f"dreambooth: could not write the tiny demo checkpoint: {type(error).__name__}: {error}")
        return
    print(f"dreambooth: no source checkpoints in {host.checkpoint_dir()}; added the tiny demo {path.name}")


def serve(port: int = 7860, listen: bool = False, models_dir: str | os.PathLike | None = None,
          block: bool = True):
    """Serve until interrupted (block=False returns the launched Blocks, for tests)."""
    from ..api import register_routes
    from . import compat

    if models_dir:
        os.environ[host.MODELS_DIR_ENV] = str(Path(models_dir).expanduser().resolve())
    host.models_root().mkdir(parents=True, exist_ok=True)
    prepare_sources()
    blocks, css = build_app()
    compat.enable_queue(blocks)
    address = "0.0.0.0" if listen else "127.0.0.1"
    compat.launch(blocks, address, port, css=css, allowed_paths=[host.models_root()], prevent_thread_lock=True)
    register_routes(compat.served_app(blocks))  # auth: env DREAMBOOTH_API_AUTH via host
    print(f"dreambooth: serving on http://{address}:{port} (models: {host.models_root()})", flush=True)
    if not block:
        return blocks
    try:
        blocks.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        blocks.close()
    return blocks
