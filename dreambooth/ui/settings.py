"""The Dreambooth tab's section of the WebUI's Settings (on_ui_settings). Values are read via host options.

A1111 builds a Settings component from each option's default type when no component is named, and
accepts only str, int and bool there (a float default stops the WebUI's start-up): every option here
is one of those or names its component.
"""
from __future__ import annotations

import os

SECTION = ("dreambooth_tab", "Dreambooth tab")
CATEGORY = "training"  # A1111 1.7+ groups sections by category; without one it lands under "Uncategorized"
POLL_SLIDER = {"minimum": 0.5, "maximum": 10, "step": 0.5}

# key -> (default, label, info, component args or None)
OPTIONS = {
    "dreambooth_tab_unload_host_model": (True, "Free the WebUI's loaded model from VRAM while training",
                                         "The model is moved back after training.", None),
    "dreambooth_tab_refresh_checkpoints": (True, "Refresh the checkpoint list after Generate Ckpt",
                                           "So the new file can be picked in txt2img at once.", None),
    "dreambooth_tab_status_poll_seconds": (1.0, "Status refresh interval (seconds)",
                                           "How often the tab reads training progress. Needs Reload UI.",
                                           POLL_SLIDER),
    "dreambooth_tab_data_roots": ("", f"Data roots (folders separated by '{os.pathsep}')",
                                  "Folders the tab and the API may read images, concepts files and sample "
                                  "templates from, and write class images to, besides the models folder.", None),
}


def add_settings(shared) -> None:
    """Register the options with `shared.opts.add_option(key, shared.OptionInfo(...))`."""
    import gradio as gr

    for key, (default, label, info, slider) in OPTIONS.items():
        extra = {"component": gr.Slider, "component_args": dict(slider)} if slider else {}
        option = shared.OptionInfo(default, label, section=SECTION, **extra)
        option.category_id = CATEGORY  # set, not passed: hosts before 1.7 have no such argument
        if hasattr(option, "info"):
            option = option.info(info) or option
        if slider and hasattr(option, "needs_reload_ui"):
            option = option.needs_reload_ui() or option
        shared.opts.add_option(key, option)


def option(key: str):
    """A Dreambooth option's value: the WebUI's setting when hosted, else its default."""
    from ..platform import host

    default = OPTIONS[key][0]
    getter = getattr(host, "host_option", None)
    return getter(key, default) if getter is not None else default
