"""The Concepts sub-tab: "use concepts JSON" (file path or JSON text) and up to 4 concept editors."""
from __future__ import annotations

import gradio as gr

from ..registry import CONCEPT_FIELDS
from .handlers import MAX_CONCEPTS, WIDGET_FIELDS, concept_key
from .params_panel import field_widget

CONCEPT_SECTIONS = ("Instance", "Class", "Sample")


def build_concepts_panel() -> dict:
    """Returns {field name or "concept<i>.<field>": component}."""
    widgets = {}
    with gr.Group(elem_id="dbt_concepts_json"):
        for field in (f for f in WIDGET_FIELDS if f.group == "Concepts"):
            widgets[field.name] = field_widget(field, f"dbt_{field.name}")
    with gr.Tabs(elem_id="dbt_concept_tabs"):
        for index in range(MAX_CONCEPTS):
            with gr.Tab(f"Concept {index + 1}", id=f"dbt_concept_tab_{index}"):
                for section in CONCEPT_SECTIONS:
                    fields = [f for f in CONCEPT_FIELDS if f.group == section]
                    with gr.Accordion(section, open=section == "Instance" or (index == 0 and section == "Sample")):
                        for start in range(0, len(fields), 2):
                            with gr.Row():
                                for field in fields[start:start + 2]:
                                    widgets[concept_key(index, field.name)] = field_widget(
                                        field, f"dbt_concept{index}_{field.name}")
    return widgets
