"""The Dreambooth tab: the same gr.Blocks inside the WebUI (on_ui_tabs) and standalone (server.py).

Components are kept by name; every event takes a *set* of inputs, so handlers receive
{component: value} and look values up by field name — nothing depends on positions.
"""
from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import gradio as gr

from ..errors import DreamboothError
from ..service.jobs import runner
from ..platform import deps
from . import compat, handlers
from .concepts_panel import build_concepts_panel
from .params_panel import build_params_panel

log = logging.getLogger("dreambooth")
POLL_SECONDS = 1.0
SCRIPT = Path(__file__).resolve().parents[2] / "javascript" / "dreambooth.js"
CREATE_MODEL_TYPES = ("detect", "v1x", "v2x-512", "v2x")
TOP_BUTTONS = (("save", "Save Params"), ("load", "Load Params"), ("ckpt", "Generate Ckpt"),
               ("samples", "Generate Samples"), ("cancel", "Cancel"), ("train", "Train"),
               ("wizard", "Performance Wizard"))


def _run(fn, *args):
    """(result, message): bad input becomes its readable message, a bug a one-line error; never a traceback."""
    try:
        return fn(*args), None
    except DreamboothError as error:
        message = f"error: {error}"
        compat.warn(str(error))  # shown as a warning, not only as text in the Message box
    except Exception as error:  # keep the tab working; details go to the console
        log.error("dreambooth tab action failed\n%s", traceback.format_exc())
        message = f"error: {type(error).__name__}: {error} (details in the console)"
    runner().note(message)
    return None, message


class Tab:
    def __init__(self):
        self.widgets: dict = {}  # field name / "concept<i>.<field>" -> component

    def values(self, data: dict) -> dict:
        return {name: data[comp] for name, comp in self.widgets.items() if comp in data}

    def build(self, standalone: bool = False, css: str | None = None):
        with compat.blocks(css=css, title="Dreambooth", standalone=standalone) as blocks:
            self._layout()
            self._wire(blocks)
            if standalone and SCRIPT.is_file():  # the WebUI loads javascript/ itself
                compat.event(blocks.load, None, js="() => {\n" + SCRIPT.read_text(encoding="utf-8") + "\n}")
        self.blocks = blocks
        return blocks

    def _layout(self):
        note = handlers.neighbour_note()
        if note:
            gr.Markdown(note, elem_id="dbt_neighbour_note")
        with gr.Row(elem_id="dbt_model_row"):
            self.model = gr.Dropdown(choices=handlers.model_choices(), value=None, label="Model",
                                     elem_id="dbt_model", info="Changing the model does not load its params: "
                                     "press Load Params.")
            self.refresh_models = gr.Button("🔄 Refresh", elem_id="dbt_refresh_models", size="sm")
            self.model_info = gr.Textbox(label="Model info", interactive=False, elem_id="dbt_model_info")
        with gr.Row(elem_id="dbt_buttons"):
            self.buttons = {key: gr.Button(label, elem_id=f"dbt_{key}",
                                           variant="primary" if key == "train" else "secondary")
                            for key, label in TOP_BUTTONS}
        self.resume = gr.Checkbox(value=False, label=handlers.resume_label(None), elem_id="dbt_resume")
        with gr.Row(elem_id="dbt_main"):
            with gr.Column(scale=3, elem_id="dbt_settings_col"):
                with gr.Tabs(elem_id="dbt_sub_tabs"):
                    with gr.Tab("Create", id="dbt_create_tab"):
                        self.new_name = gr.Textbox(label="Name", elem_id="dbt_new_name",
                                                   info="Folder name under models/dreambooth.")
                        with gr.Row():
                            sources = handlers.source_choices()
                            self.source = gr.Dropdown(choices=sources, value=sources[0] if len(sources) == 1 else None,
                                                      label="Source checkpoint",
                                                      elem_id="dbt_source", info="A .safetensors/.ckpt from the "
                                                      "checkpoint folder; the model type is detected.")
                            self.refresh_sources = gr.Button("🔄", elem_id="dbt_refresh_sources", size="sm")
                        self.model_type = gr.Dropdown(choices=list(CREATE_MODEL_TYPES), value="detect",
                                                      label="Model type", elem_id="dbt_model_type",
                                                      info="detect reads it from the checkpoint; override only "
                                                      "when an SD 2.x 768 v-prediction file is misdetected.")
                        self.create = gr.Button("Create Model", variant="primary", elem_id="dbt_create")
                    with gr.Tab("Parameters", id="dbt_params_tab"):
                        self.vram = gr.Number(label="VRAM (GB) for the Performance Wizard", value=0,
                                              elem_id="dbt_wizard_vram", info="Used only without a CUDA "
                                              "device (CPU/MPS); 0 = train on the CPU.")
                        self.widgets.update(build_params_panel())
                        self.refresh_loras = gr.Button("🔄 Refresh the Lora Model list", size="sm",
                                                       elem_id="dbt_refresh_loras")
                    with gr.Tab("Concepts", id="dbt_concepts_tab"):
                        self.widgets.update(build_concepts_panel())
            with gr.Column(scale=2, elem_id="dbt_output_col"):
                # packages install.py could not install are named here, with the command to run
                self.message = gr.Textbox(label="Message", lines=3, interactive=False, elem_id="dbt_message",
                                          value=deps.missing_message() or "")
                self.status = gr.Textbox(label="Status", value="idle", interactive=False, elem_id="dbt_status")
                self.samples = compat.gallery(label="Samples", columns=2, height=280, elem_id="dbt_sample_gallery")
                self.charts = compat.gallery(label="Charts", columns=3, height=200, elem_id="dbt_charts")
                self.log = gr.Textbox(label="Log (newest first)", lines=10, max_lines=10, interactive=False, elem_id="dbt_log",
                                      **compat.textbox_kwargs(copy_button=True, newest_first=True))
                self.poll_sig = gr.State(None)

    # events ---------------------------------------------------------------------------------------
    def _wire(self, blocks):
        widgets = list(self.widgets.values())
        everything = {self.model, *widgets}
        b = self.buttons

        def msg(text):
            return {self.message: text}

        def on_save(data):
            result, error = _run(handlers.save_params, data[self.model], self.values(data))
            return msg(error or _noted(result))

        def on_load(data):
            result, error = _run(handlers.load_params, data[self.model])
            if error:
                return msg(error)
            values, text = result
            out = {self.widgets[name]: value for name, value in values.items() if name in self.widgets}
            out[self.message] = _noted(text)
            return out

        def on_train(data):
            result, error = _run(handlers.train, data[self.model], self.values(data), bool(data[self.resume]))
            return msg(error or _noted(result))

        def on_samples(data):
            result, error = _run(handlers.generate_samples, data[self.model], self.values(data))
            if error:
                return msg(error)
            paths, text = result
            out = msg(_noted(text))
            if paths:
                out[self.samples] = paths
            return out

        def on_ckpt(data):
            result, error = _run(handlers.generate_ckpt, data[self.model], self.values(data))
            if error:
                return msg(error)
            return {self.message: result, self.source: gr.update(choices=handlers.source_choices())}

        def on_wizard(data):
            result, error = _run(handlers.wizard, data[self.model], self.values(data), data[self.vram])
            if error:
                return msg(error)
            changes, text = result
            out = {self.widgets[name]: value for name, value in changes.items() if name in self.widgets}
            out[self.message] = _noted(text)
            return out

        def on_create(data):
            name = (data[self.new_name] or "").strip()
            result, error = _run(handlers.create_model, name, data[self.source], data[self.model_type])
            if error:
                return msg(error)
            out = {self.message: _noted(result),
                   self.model: gr.update(choices=handlers.model_choices(), value=name),
                   self.model_info: handlers.model_info(name)}
            # the new model's params (the demo's concept and settings included) go straight into the fields,
            # so Train uses them rather than the defaults on screen
            loaded, error = _run(handlers.load_params, name)
            if error:
                return {**out, self.message: f"{result}\n{error}"}
            values, _ = loaded
            out.update({self.widgets[key]: value for key, value in values.items() if key in self.widgets})
            return out

        widget_outputs = [self.message, *widgets]
        compat.event(b["save"].click, on_save, everything, [self.message])
        compat.event(b["load"].click, on_load, {self.model}, widget_outputs)
        compat.event(b["train"].click, on_train, everything | {self.resume}, [self.message])
        compat.event(b["samples"].click, on_samples, everything, [self.message, self.samples])
        compat.event(b["ckpt"].click, on_ckpt, everything, [self.message, self.source])
        compat.event(b["cancel"].click, lambda: _noted(handlers.cancel()), None, [self.message])
        compat.event(b["wizard"].click, on_wizard, everything | {self.vram}, widget_outputs)
        compat.event(self.create.click, on_create, {self.new_name, self.source, self.model_type},
                     [self.message, self.model, self.model_info, *widgets])
        compat.event(self.refresh_models.click,
                     lambda: gr.update(choices=handlers.model_choices()), None, [self.model])
        compat.event(self.refresh_sources.click,
                     lambda: gr.update(choices=handlers.source_choices()), None, [self.source])
        compat.event(self.model.change, handlers.model_info, [self.model], [self.model_info])
        lora = self.widgets["lora_model_name"]  # its choices: the Lora folder and the selected model's lora/
        for trigger in (self.model.change, self.refresh_loras.click):
            compat.event(trigger, lambda model: gr.update(choices=handlers.lora_choices(model)), [self.model], [lora])
        compat.event(blocks.load, lambda: gr.update(choices=handlers.lora_choices()), None, [lora])
        # the tab is built once per server start: a page (re)load lists the models and checkpoints made since
        compat.event(blocks.load, lambda: (gr.update(**handlers.model_choices_on_load()),
                                           gr.update(choices=handlers.source_choices())), None,
                     [self.model, self.source])
        compat.event(self.model.change, lambda model: gr.update(label=handlers.resume_label(model), value=False),
                     [self.model], [self.resume])
        outputs = [self.status, self.samples, self.charts, self.log, self.model_info, self.resume, self.poll_sig]
        from .settings import option

        seconds = float(option("dreambooth_tab_status_poll_seconds") or POLL_SECONDS)
        compat.poll(blocks, self._poll, outputs, max(0.25, seconds), inputs=[self.poll_sig])

    def _poll(self, last):
        """Live panel; components whose content did not change get a no-op update (no flicker)."""
        data = handlers.poll()
        sig = {key: repr(data[key]) for key in ("status", "log")}
        for key in ("samples", "charts"):  # charts keep their file names: their times tell a redraw
            sig[key] = repr([(path, os.path.getmtime(path)) for path in data[key]])
        last = last or {}
        out = []
        for key in ("status", "samples", "charts", "log"):
            if last.get(key) == sig[key] or (key in ("samples", "charts") and not data[key]):
                out.append(gr.update())
            else:
                out.append(data[key])
        # the job's model moves on (revision, epoch): re-read its info when the status changes. The info
        # names its model, and gradio 3 polls cannot read the dropdown's current value.
        changed = data["model"] and last.get("status") != sig["status"]
        out.append(handlers.model_info(data["model"]) if changed else gr.update())
        # a run that saved a snapshot (or a Cancel) makes the job's model resumable: say so on the box
        out.append(gr.update(label=handlers.resume_label(data["model"])) if changed else gr.update())
        return (*out, sig)


def _noted(text: str) -> str:
    runner().note(text)
    return text


def build_tab(standalone: bool = False, css: str | None = None):
    """The tab's gr.Blocks. Hosted (WebUI): no css/theme, no launch — the host renders it."""
    return Tab().build(standalone=standalone, css=css)
