"""WebUI glue for the Dreambooth tab: host callbacks only; everything else lives in the `dreambooth` package.

The WebUI executes this file as a fresh module on every start and "Reload UI", with this extension's
folder first on sys.path. Long-lived state (the running job) lives in the package, which stays in
sys.modules. The older Dreambooth extension also ships a top-level `dreambooth` package: if that one is
already imported we say so and run none of its code. Nothing torch-heavy is imported here.
"""
import importlib
import logging
import sys
from pathlib import Path

from modules import script_callbacks

EXT_DIR = Path(__file__).resolve().parents[1]
TITLE, ELEM_ID = "Dreambooth", "dreambooth_interface"
log = logging.getLogger("dreambooth")


def _locations(module) -> list:
    if getattr(module, "__file__", None):
        return [Path(module.__file__).resolve().parent]
    return [Path(p).resolve() for p in getattr(module, "__path__", [])]


def _is_ours(module) -> bool:
    places = _locations(module)
    return bool(places) and all(p == EXT_DIR / "dreambooth" for p in places)


def _load_package():
    """(package, None) for this extension's `dreambooth`, or (None, message) on a clash."""
    found = sys.modules.get("dreambooth")
    if found is None:
        if str(EXT_DIR) not in sys.path:
            sys.path.insert(0, str(EXT_DIR))
        try:
            found = importlib.import_module("dreambooth")
        except Exception as error:  # pragma: no cover - a broken checkout
            return None, f"Dreambooth tab: cannot import its package from {EXT_DIR}: {error}"
    if _is_ours(found):
        return found, None
    other = ", ".join(str(p) for p in _locations(found)) or repr(found)
    return None, (f"Dreambooth tab disabled: another 'dreambooth' package is already loaded from {other}, "
                  f"this extension's is {EXT_DIR / 'dreambooth'}. Fix: disable the older Dreambooth extension "
                  "in Extensions > Installed (or remove its folder) and restart the WebUI.")


PACKAGE, CLASH = _load_package()
if CLASH:
    print(CLASH, file=sys.stderr)


def _message_tab(text: str):
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.Markdown(f"**Dreambooth tab unavailable.** {text}")
    return [(blocks, TITLE, ELEM_ID)]


def on_ui_tabs():
    if CLASH:
        return _message_tab(CLASH)
    try:
        tab = importlib.import_module("dreambooth.ui.tab")
        # the older Dreambooth extension's tab is also titled "Dreambooth": tell the two apart
        others = importlib.import_module("dreambooth.platform.host").other_dreambooth_extensions()
        return [(tab.build_tab(), "Dreambooth tab" if others else TITLE, ELEM_ID)]
    except Exception as error:  # keep the WebUI alive; say what is wrong where the user looks
        log.exception("dreambooth: building the tab failed")
        hint = importlib.import_module("dreambooth.platform.deps").missing_message() or ""  # stdlib-only module
        return _message_tab(f"Building the tab failed: {type(error).__name__}: {error}. {hint}".strip())


def on_ui_settings():
    if CLASH:
        return
    try:
        from modules import shared

        importlib.import_module("dreambooth.ui.settings").add_settings(shared)
    except Exception as error:  # one broken part must not take the WebUI down: log it with its traceback
        log.exception("dreambooth: adding settings failed: %s", error)


def on_app_started(demo, app):
    if CLASH or app is None or getattr(app, "_dreambooth_routes", False):
        return
    try:
        api_auth = importlib.import_module("dreambooth.platform.host").host_api_auth()  # the WebUI's --api-auth
        importlib.import_module("dreambooth.api").register_routes(app, api_auth=api_auth)
        app._dreambooth_routes = True
    except Exception as error:  # the tab still works without its routes
        log.exception("dreambooth: registering the REST routes failed: %s", error)


def on_script_unloaded():
    """Reload UI / shutdown: the job keeps running (its state is in the package); let the tab tidy up."""
    if CLASH:
        return
    tab = sys.modules.get("dreambooth.ui.tab")
    cleanup = getattr(tab, "on_unloaded", None)
    if cleanup is not None:
        try:
            cleanup()
        except Exception as error:  # Reload UI must go on
            log.exception("dreambooth: tab cleanup failed: %s", error)


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_script_unloaded(on_script_unloaded)
