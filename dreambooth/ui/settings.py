"""The Dreambooth section of the WebUI's Settings (on_ui_settings). Values are read via host options."""
from __future__ import annotations

import os

SECTION = ("dreambooth", "Dreambooth")

# key -> (default, label, info)
OPTIONS = {
    "dreambooth_unload_host_model": (True, "Free the WebUI's loaded model from VRAM while training",
                                     "The model is moved back after training."),
    "dreambooth_refresh_checkpoints": (True, "Refresh the checkpoint list after Generate Ckpt",
                                       "So the new file can be picked in txt2img at once."),
    "dreambooth_status_poll_seconds": (1.0, "Status refresh interval (seconds)",
                                       "How often the tab reads training progress. Needs Reload UI."),
    "dreambooth_data_roots": ("", f"Data roots (folders separated by '{os.pathsep}')",
                              "Folders the tab and the API may read images, concepts files and sample templates "
                              "from, and write class images to, besides the models folder."),
}


def add_settings(shared) -> None:
    """Register the options with `shared.opts.add_option(key, shared.OptionInfo(...))`."""
    for key, (default, label, info) in OPTIONS.items():
        option = shared.OptionInfo(default, label, section=SECTION)
        if hasattr(option, "info"):
            option = option.info(info) or option
        if key == "dreambooth_status_poll_seconds" and hasattr(option, "needs_reload_ui"):
            option = option.needs_reload_ui() or option
        shared.opts.add_option(key, option)


def option(key: str):
    """A Dreambooth option's value: the WebUI's setting when hosted, else its default."""
    from .. import host

    default = OPTIONS[key][0]
    getter = getattr(host, "host_option", None)
    return getter(key, default) if getter is not None else default
