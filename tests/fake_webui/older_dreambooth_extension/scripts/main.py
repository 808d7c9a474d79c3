"""The older sd_dreambooth_extension's host callbacks, reduced to what can clash with ours: its tab
(titled "Dreambooth", elem ids with the db_ prefix) and its routes under /dreambooth/."""
import gradio as gr

from modules import script_callbacks


def on_ui_tabs():
    with gr.Blocks() as interface:
        gr.Dropdown(label="Model type", elem_id="db_model_type")
        gr.Textbox(label="Status", elem_id="db_status")
        gr.Button("Train", elem_id="db_train")
        gr.Button("Cancel", elem_id="db_cancel")
    return ((interface, "Dreambooth", "dreambooth_v2"),)


def dreambooth_api(_, app):
    @app.get("/dreambooth/status")
    def status():
        return {"owner": "sd_dreambooth_extension", "current_state": "idle"}

    @app.get("/dreambooth/models")
    def models():
        return {"owner": "sd_dreambooth_extension", "models": []}

    @app.post("/dreambooth/start_training")
    def start_training(model_name: str = ""):
        return {"owner": "sd_dreambooth_extension", "status": "Invalid model name."}


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(dreambooth_api)
