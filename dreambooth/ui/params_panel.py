"""Widgets built from the registry: one per field, the field's help as the hint, grouped by section."""
from __future__ import annotations

import gradio as gr

from ..registry import Field
from .handlers import WIDGET_FIELDS

# Sections of the Parameters sub-tab: the registry's groups in registry order; "Concepts" has its own sub-tab.
PARAM_GROUPS = tuple(dict.fromkeys(f.group for f in WIDGET_FIELDS if f.group != "Concepts"))


def field_widget(field: Field, elem_id: str):
    """The widget for one registry field; its label says the field and its help is the hint."""
    common = dict(label=field.label, info=f"{field.help} [{field.name}]", elem_id=elem_id,
                  elem_classes=["dbt-field"])
    if field.kind is bool:
        return gr.Checkbox(value=field.default, **common)
    if field.choices:
        return gr.Dropdown(choices=list(field.choices), value=field.default, **common)
    if field.name == "lora_model_name":  # files of the Lora folder; a saved name not (yet) there still loads
        from .handlers import lora_choices

        return gr.Dropdown(choices=lora_choices(), value=field.default, allow_custom_value=True, **common)
    if field.kind in (int, float):  # no precision=0: 2.7 epochs is refused with a message, never rounded
        return gr.Number(value=field.default, **common)
    lines = 3 if field.name in ("concepts_path",) or "prompt" in field.name else 1
    return gr.Textbox(value=field.default, lines=lines, **common)


def build_params_panel() -> dict:
    """Accordions per registry group; the "Advanced: …" groups (the older extension's rarer settings) sit
    together inside one closed "Advanced" accordion. Returns {field name: component}."""
    widgets = {}
    basic = [group for group in PARAM_GROUPS if not group.startswith(ADVANCED)]
    for index, group in enumerate(basic):
        with gr.Accordion(group, open=index < 2, elem_id=_group_id(group)):
            _group_fields(group, widgets)
    advanced = [group for group in PARAM_GROUPS if group.startswith(ADVANCED)]
    if advanced:
        with gr.Accordion("Advanced", open=False, elem_id="dbt_group_advanced"):
            for group in advanced:
                with gr.Accordion(group[len(ADVANCED):].strip().capitalize(), open=False, elem_id=_group_id(group)):
                    _group_fields(group, widgets)
    return widgets


ADVANCED = "Advanced:"


def _group_id(group: str) -> str:
    return "dbt_group_" + "_".join(group.lower().replace(":", " ").split())


def _group_fields(group: str, widgets: dict) -> None:
    fields = [f for f in WIDGET_FIELDS if f.group == group]
    for start in range(0, len(fields), 2):
        with gr.Row():
            for field in fields[start:start + 2]:
                widgets[field.name] = field_widget(field, f"dbt_{field.name}")
