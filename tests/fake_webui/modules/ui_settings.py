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


def create_ui():
    """The Settings tab: every registered option becomes a component."""
    with gr.Blocks(analytics_enabled=False) as settings:
        for key in list(shared.opts.data_labels):
            create_setting_component(key)
    return settings
