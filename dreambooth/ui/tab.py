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
from . import compat, handlers, live
from .concepts_panel import build_concepts_panel
from .params_panel import build_params_panel

log = logging.getLogger("dreambooth")
POLL_SECONDS = 1.0
SCRIPT = Path(__file__).resolve().parents[2] / "javascript" / "dreambooth.js"
CREATE_MODEL_TYPES = ("detect", "v1x", "v2x-512", "v2x", "SDXL")
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


RULE = ("**Every button uses what is on screen**; Train also saves it to the model's `db_config.json`. "
        "Save Params or the Wizard during a training change the next run, not the running one.")
CHART_LABELS = (("Loss", "dbt_chart_loss"), ("Learning rate", "dbt_chart_lr"), ("Memory (RAM or VRAM)",
                                                                               "dbt_chart_memory"))


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
                                     elem_id="dbt_model", info="Selecting a model loads its params, unless "
                                     "fields were edited: then Load Params replaces the edits.")
            self.refresh_models = gr.Button("🔄 Refresh", elem_id="dbt_refresh_models", size="sm")
            self.model_info = gr.Textbox(label="Model info", interactive=False, elem_id="dbt_model_info")
        with gr.Row(elem_id="dbt_buttons"):
            self.buttons = {key: gr.Button(label, elem_id=f"dbt_{key}",
                                           variant="primary" if key == "train" else "secondary")
                            for key, label in TOP_BUTTONS}
        with gr.Row(elem_id="dbt_rule_row"):
            self.resume = gr.Checkbox(value=False, label=handlers.resume_label(None), elem_id="dbt_resume")
            gr.Markdown(RULE, elem_id="dbt_rule")
        self.shown = gr.State(None)  # the model whose saved params the fields hold (None: the defaults)
        with gr.Row(elem_id="dbt_main"):
            with gr.Column(scale=3, elem_id="dbt_settings_col"):
                with gr.Tabs(elem_id="dbt_sub_tabs"):
                    with gr.Tab("Create", id="dbt_create_tab"):
                        self._create_panel()
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
                self.status = gr.Textbox(label="Status", value="idle", interactive=False, elem_id="dbt_status")
                # packages install.py could not install are named here, with the command to run
                self.message = gr.Textbox(label="Message", lines=3, max_lines=24, interactive=False,
                                          elem_id="dbt_message", value=deps.missing_message() or "")
                self.samples = compat.gallery(label="Samples of the selected model (newest first)", columns=2,
                                              height=320, elem_id="dbt_sample_gallery")
                self.charts = [compat.chart_image(label, elem_id) for label, elem_id in CHART_LABELS]
                self.log = gr.Textbox(label="Log (newest first)", lines=10, max_lines=10, interactive=False, elem_id="dbt_log",
                                      **compat.textbox_kwargs(copy_button=True, newest_first=True))
                self.poll_sig = gr.State(None)

    def _create_panel(self):
        self.new_name = gr.Textbox(label="Name", elem_id="dbt_new_name", info="Folder name under models/dreambooth.")
        with gr.Row():
            sources = handlers.source_choices()
            self.source = gr.Dropdown(choices=sources, value=sources[0] if len(sources) == 1 else None,
                                      label="Source checkpoint", elem_id="dbt_source",
                                      info="A .safetensors/.ckpt from the checkpoint folder; the model type is "
                                      "detected.")
            self.refresh_sources = gr.Button("🔄 Refresh list", elem_id="dbt_refresh_sources", size="sm")
        with gr.Row():
            self.hub_id = gr.Textbox(label="or a Hugging Face Hub model id", elem_id="dbt_hub_id",
                                     placeholder="runwayml/stable-diffusion-v1-5",
                                     info="A diffusers model; used instead of the Source checkpoint when filled. "
                                     "Offline (HF_HUB_OFFLINE=1) it is read from the local Hugging Face cache.")
            self.hub_token = gr.Textbox(label="Hub token (optional)", type="password", elem_id="dbt_hub_token",
                                        info="For private or gated models; never saved.")
        self.model_type = gr.Dropdown(choices=list(CREATE_MODEL_TYPES), value="detect", label="Model type",
                                      elem_id="dbt_model_type", info="detect reads it from the checkpoint; override "
                                      "only when an SD 2.x 768 v-prediction file is misdetected.")
        self.create = gr.Button("Create Model", variant="primary", elem_id="dbt_create")

    def _model_view(self, model):
        """What belongs to the selected model: its info, Resume box, samples and charts."""
        return {self.model_info: handlers.model_info(model),
                self.resume: gr.update(label=handlers.resume_label(model), value=False),
                self.samples: live.model_gallery(model),
                **dict(zip(self.charts, live.model_charts(model)))}

    def _fields(self, values: dict) -> dict:
        return {self.widgets[name]: value for name, value in values.items() if name in self.widgets}

    # events ---------------------------------------------------------------------------------------
    def _wire(self, blocks):
        widgets = list(self.widgets.values())
        everything = {self.model, *widgets}
        b = self.buttons

        def msg(text):
            return {self.message: text}

        def on_save(data):
            result, error = _run(handlers.save_params, data[self.model], self.values(data))
            return msg(error) if error else {self.message: _noted(result), self.shown: data[self.model]}

        def on_load(data):
            result, error = _run(handlers.load_params, data[self.model])
            if error:
                return msg(error)
            values, text = result
            return {**self._fields(values), self.message: _noted(text), self.shown: data[self.model]}

        def on_train(data):
            result, error = _run(handlers.train, data[self.model], self.values(data), bool(data[self.resume]))
            return msg(error) if error else {self.message: _noted(result), self.shown: data[self.model]}

        def on_samples(data):
            result, error = _run(handlers.generate_samples, data[self.model], self.values(data))
            if error:
                return msg(error)
            paths, text = result
            out = msg(_noted(text))
            if paths:
                out[self.samples] = live.model_gallery(data[self.model])
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
            return {**self._fields(changes), self.message: _noted(text)}

        def on_create(data):
            name = (data[self.new_name] or "").strip()
            result, error = _run(handlers.create_model, name, data[self.source], data[self.model_type],
                                 data[self.hub_id], data[self.hub_token])
            if error:
                return msg(error)
            out = {self.message: _noted(result), self.model: gr.update(choices=handlers.model_choices(), value=name),
                   **self._model_view(name)}
            # the new model's params (the demo's concept and settings included) go straight into the fields,
            # so Train uses them rather than the defaults on screen
            loaded, error = _run(handlers.load_params, name)
            if error:
                return {**out, self.message: f"{result}\n{error}"}
            return {**out, **self._fields(loaded[0]), self.shown: name}

        def on_model(data):
            """Another model: its info, samples and charts; its params too unless fields were edited."""
            model, shown = data[self.model], data[self.shown]
            out = self._model_view(model)
            if not (model or "").strip() or model == shown:
                return out
            result, error = _run(handlers.params_on_select, model, shown, self.values(data))
            if error:
                return {**out, self.message: error}
            values, text = result
            out[self.message] = _noted(text)
            if values is not None:
                out.update({**self._fields(values), self.shown: model})
            return out

        widget_outputs = [self.message, *widgets]
        view = [self.model_info, self.resume, self.samples, *self.charts]
        compat.event(b["save"].click, on_save, everything, [self.message, self.shown])
        compat.event(b["load"].click, on_load, {self.model}, widget_outputs + [self.shown])
        compat.event(b["train"].click, on_train, everything | {self.resume}, [self.message, self.shown])
        compat.event(b["samples"].click, on_samples, everything, [self.message, self.samples])
        compat.event(b["ckpt"].click, on_ckpt, everything, [self.message, self.source])
        compat.event(b["cancel"].click, lambda: _noted(handlers.cancel()), None, [self.message])
        compat.event(b["wizard"].click, on_wizard, everything | {self.vram}, widget_outputs)
        compat.event(self.create.click, on_create,
                     {self.new_name, self.source, self.model_type, self.hub_id, self.hub_token},
                     [self.model, *view, self.shown] + widget_outputs)
        compat.event(self.refresh_models.click,
                     lambda: gr.update(choices=handlers.model_choices()), None, [self.model])
        compat.event(self.refresh_sources.click,
                     lambda: gr.update(choices=handlers.source_choices()), None, [self.source])
        compat.event(self.model.change, on_model, everything | {self.shown}, view + [self.shown] + widget_outputs)
        lora = self.widgets["lora_model_name"]  # its choices: the Lora folder and the selected model's lora/
        for trigger in (self.model.change, self.refresh_loras.click):
            compat.event(trigger, lambda model: gr.update(choices=handlers.lora_choices(model)), [self.model], [lora])
        compat.event(blocks.load, lambda: gr.update(choices=handlers.lora_choices()), None, [lora])
        # the tab is built once per server start: a page (re)load lists the models and checkpoints made since
        compat.event(blocks.load, lambda: (gr.update(**handlers.model_choices_on_load()),
                                           gr.update(choices=handlers.source_choices())), None,
                     [self.model, self.source])
        outputs = [self.status, self.samples, *self.charts, self.log, self.model_info, self.resume, self.poll_sig]
        from .settings import option

        seconds = float(option("dreambooth_tab_status_poll_seconds") or POLL_SECONDS)
        compat.poll(blocks, self._poll, outputs, max(0.25, seconds), inputs=[self.poll_sig, self.model])

    def _poll(self, last, model):
        """Live panel; components whose content did not change get a no-op update (no flicker). The samples
        and charts are the selected model's (the running job's when none is selected)."""
        data = live.poll()
        shown = model or data["model"]
        gallery = live.model_gallery(shown)
        charts = live.model_charts(shown)
        sig = {key: repr(data[key]) for key in ("status", "log")}
        sig["samples"] = repr([(path, _mtime(path)) for path, _ in gallery])
        sig["charts"] = repr([(path, _mtime(path)) for path in charts])  # same names: their times tell a redraw
        last = last or {}
        out = [data["status"] if last.get("status") != sig["status"] else gr.update()]
        out.append(gallery if last.get("samples") != sig["samples"] else gr.update())
        out += charts if last.get("charts") != sig["charts"] else [gr.update()] * len(charts)
        out.append(data["log"] if last.get("log") != sig["log"] else gr.update())
        # the job's model moves on (revision, epoch): re-read its info when the status changes. The info
        # names its model.
        changed = data["model"] and model in (None, "", data["model"]) and last.get("status") != sig["status"]
        out.append(handlers.model_info(data["model"]) if changed else gr.update())
        # a run that saved a snapshot (or a Cancel) makes the job's model resumable: say so on the box
        out.append(gr.update(label=handlers.resume_label(data["model"])) if changed else gr.update())
        return (*out, sig)


def _mtime(path) -> float | None:
    try:
        return os.path.getmtime(path) if path else None
    except OSError:
        return None


def _noted(text: str) -> str:
    runner().note(text)
    return text


def build_tab(standalone: bool = False, css: str | None = None):
    """The tab's gr.Blocks. Hosted (WebUI): no css/theme, no launch — the host renders it."""
    return Tab().build(standalone=standalone, css=css)
