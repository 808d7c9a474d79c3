"""modules.ui_settings: the Settings page builds one component per option, as A1111 1.10 does.

Without a `component`, only str, int and bool defaults are accepted; anything else (a float) raises
"bad options item type", and the real WebUI then hangs at start-up.
"""
import gradio as gr

from modules import shared


def create_setting_component(key):
    info = shared.opts.data_labels[key]
    kind = type(info.default)
    args = info.component_args() if callable(info.component_args) else (info.component_args or {})
    if info.component is not None:
        component = info.component
    elif kind == str:
        component = gr.Textbox
    elif kind == int:
        component = gr.Number
    elif kind == bool:
        component = gr.Checkbox
    else:
        raise Exception(f"bad options item type: {kind} for key {key}")
    return component(label=info.label, value=info.default, elem_id=f"setting_{key}", **args)


# A1111 1.10's categories (shared_options.py); a section whose options name none sits under "Uncategorized"
CATEGORIES = {"saving": "Saving images", "sd": "Stable Diffusion", "ui": "User Interface", "system": "System",
              "postprocessing": "Postprocessing", "training": "Training"}
section_categories = {}  # section id -> the category label the Settings page files it under


def create_ui():
    """The Settings tab: every registered option becomes a component, its section filed under a category."""
    with gr.Blocks(analytics_enabled=False) as settings:
        for key in list(shared.opts.data_labels):
            info = shared.opts.data_labels[key]
            section_categories[info.section[0]] = CATEGORIES.get(getattr(info, "category_id", None), "Uncategorized")
            create_setting_component(key)
    return settings
