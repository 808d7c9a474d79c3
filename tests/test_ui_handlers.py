"""The tab's handlers: params round-trip, bad input shown as readable messages, the tab built from the registry."""
import json

import pytest

from dreambooth.config import TrainConfig, save_config
from dreambooth.registry import CONCEPT_FIELDS, FIELDS
from dreambooth.ui import handlers, live
from dreambooth.ui.handlers import concept_key


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DREAMBOOTH_DATA_ROOTS", str(tmp_path))  # the tab may use the test's folders
    return tmp_path / "models"


def make_model(models, name="m1", cfg=None):
    """A model folder as Create leaves it (the weights are not read by params handlers)."""
    path = models / "dreambooth" / name
    (path / "working").mkdir(parents=True)
    save_config(cfg or TrainConfig({"model_name": name, "model_type": "v1x", "revision": 7}), path / "db_config.json")
    return path


def images_dir(tmp_path, n=2):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 40, 80, 120)).save(folder / f"img{i}.png")
    return folder


def test_params_round_trip(models, tmp_path):
    make_model(models)
    values = handlers.default_values()
    values.update(num_train_epochs=3, learning_rate=1e-5, lr_scheduler="cosine", gradient_checkpointing=False,
                  mixed_precision="no")
    values[concept_key(0, "instance_data_dir")] = str(images_dir(tmp_path))
    values[concept_key(0, "instance_prompt")] = "photo of ohwx dog"
    values[concept_key(0, "n_save_sample")] = 2
    values[concept_key(2, "instance_data_dir")] = str(tmp_path / "third")  # editors need not be contiguous
    message = handlers.save_params("m1", values)
    assert "saved" in message
    saved = json.loads((models / "dreambooth/m1/db_config.json").read_text())
    assert saved["revision"] == 7 and saved["model_type"] == "v1x"  # bookkeeping kept
    assert saved["num_train_epochs"] == 3 and len(saved["concepts_list"]) == 2
    loaded, text = handlers.load_params("m1")
    assert "loaded" in text
    assert loaded["num_train_epochs"] == 3 and loaded["learning_rate"] == 1e-5
    assert loaded["lr_scheduler"] == "cosine" and loaded["gradient_checkpointing"] is False
    assert loaded[concept_key(0, "instance_prompt")] == "photo of ohwx dog"
    assert loaded[concept_key(0, "n_save_sample")] == 2
    assert loaded[concept_key(1, "instance_data_dir")] == str(tmp_path / "third")  # compacted into editor 2
    assert loaded[concept_key(3, "instance_data_dir")] == ""
    # a second save of what was loaded changes nothing
    handlers.save_params("m1", loaded)
    assert json.loads((models / "dreambooth/m1/db_config.json").read_text()) == saved


def test_more_concepts_than_editors_warns(models):
    cfg = TrainConfig({"model_name": "m1"})
    cfg.set("concepts_list", [{"instance_data_dir": f"/d{i}"} for i in range(6)])
    make_model(models, cfg=cfg)
    _, text = handlers.load_params("m1")
    assert "6 concepts" in text


BAD = [
    ("train, no model", lambda m, t: handlers.train("", handlers.default_values()), "no model selected"),
    ("train, missing folder", lambda m, t: handlers.train("m1", {**handlers.default_values(),
                                                                 concept_key(0, "instance_data_dir"): str(t / "nope")}),
     "does not exist"),
    ("train, no concepts", lambda m, t: handlers.train("m1", handlers.default_values()), "no concepts"),
    ("train, bad epochs", lambda m, t: handlers.train("m1", {**handlers.default_values(), "num_train_epochs": 0}),
     "num_train_epochs"),
    ("train, empty lr", lambda m, t: handlers.train("m1", {**handlers.default_values(), "learning_rate": None}),
     "learning_rate"),
    ("save, bad lr text", lambda m, t: handlers.save_params("m1", {**handlers.default_values(),
                                                                   "learning_rate": "fast"}), "learning_rate"),
    ("save, bad concept value", lambda m, t: handlers.save_params(
        "m1", {**handlers.default_values(), concept_key(0, "instance_data_dir"): "/x",
               concept_key(0, "n_save_sample"): -3}), "n_save_sample"),
    ("load, model without params", lambda m, t: handlers.load_params("noparams"), "does not exist"),
    ("load, unknown model", lambda m, t: handlers.load_params("ghost"), "does not exist"),
    ("load, path trick", lambda m, t: handlers.load_params("../etc"), "not allowed"),
    ("create, existing name", lambda m, t: handlers.create_model("m1", str(t)), "already exists"),
    ("create, no source", lambda m, t: handlers.create_model("new", ""), "no source chosen"),
    ("create, hub id not org/name", lambda m, t: handlers.create_model("new", "", hub_id="../etc"), "org/name"),
    ("save, epochs not whole", lambda m, t: handlers.save_params("m1", {**handlers.default_values(),
                                                                        "num_train_epochs": 2.7}),
     "num_train_epochs (Training steps per image (epochs)) = 2.7 is not a whole number: type 2 or 3"),
    ("create, missing source", lambda m, t: handlers.create_model("new", str(t / "no/such.safetensors")),
     "does not exist"),
    ("create, source outside the roots", lambda m, t: handlers.create_model("new", "/no/such.safetensors"),
     "not allowed"),
    ("save, folder outside the roots", lambda m, t: handlers.save_params(
        "m1", {**handlers.default_values(), concept_key(0, "instance_data_dir"): "/etc"}), "not allowed"),
    ("save, template outside the roots", lambda m, t: handlers.save_params(
        "m1", {**handlers.default_values(), concept_key(0, "instance_data_dir"): str(t),
               concept_key(0, "save_sample_template"): "/etc/passwd"}), "not allowed"),
    ("samples, no model", lambda m, t: handlers.generate_samples("", handlers.default_values()), "no model"),
    ("ckpt, no model", lambda m, t: handlers.generate_ckpt(""), "no model selected"),
    ("wizard, no images", lambda m, t: handlers.wizard("m1", handlers.default_values(), 8), "no concepts"),
]


@pytest.mark.parametrize("what,call,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_readable_message(models, tmp_path, what, call, expected):
    from dreambooth.service.jobs import runner
    from dreambooth.ui.tab import _run

    make_model(models)
    (models / "dreambooth" / "noparams" / "working").mkdir(parents=True)
    result, message = _run(call, models, tmp_path)
    assert result is None
    assert message.startswith("error: ") and expected in message, message
    assert "Traceback" not in message
    assert message in "\n".join(runner().log_lines())
    assert not runner().busy()


def test_wizard_fills_fields(models, tmp_path):
    make_model(models)
    values = {**handlers.default_values(), concept_key(0, "instance_data_dir"): str(images_dir(tmp_path, 3)),
              "train_batch_size": 7}
    changes, text = handlers.wizard("m1", values, 8 if handlers.detect_vram_gb() is None else None)
    assert "3 image(s)" in text and "gradient_accumulation_steps = 1" in text
    assert set(changes) <= {f.name for f in FIELDS}
    # only what differs from the screen comes back, and the message lists it (the tab marks those fields)
    assert "gradient_accumulation_steps" not in changes  # 1 on screen, 1 recommended
    assert changes["train_batch_size"] < 7 and f"train_batch_size 7 → {changes['train_batch_size']}" in text
    assert all(handlers._differs(values[name], value) for name, value in changes.items())


def test_status_text():
    from dreambooth.train.control import TrainStatus

    text = live.status_text(TrainStatus(state="training", model_name="m", epoch=1, total_epochs=2, step=3,
                                            total_steps=8, loss=0.1234, lr=1e-4, it_per_s=2.5, eta_s=75,
                                            memory_mb=900))
    for part in ("epoch 1/2", "step 3/8", "loss 0.1234", "2.50\u00a0it/s", "ETA 1:15", "memory 900\u00a0MB"):
        assert part in text
    assert "lr 1.00e\u201104" in text and "-" not in text  # the status box cannot wrap inside the number
    assert live.status_text(TrainStatus()) == "idle"


def test_tab_has_a_widget_per_registry_field(models):
    from dreambooth.ui.tab import Tab

    tab = Tab()
    tab.build()
    expected = {f.name for f in handlers.WIDGET_FIELDS}
    expected |= {concept_key(i, f.name) for i in range(handlers.MAX_CONCEPTS) for f in CONCEPT_FIELDS}
    assert set(tab.widgets) == expected
    for name, component in tab.widgets.items():  # every field shows its registry help as the hint
        field = next(f for f in (*FIELDS, *CONCEPT_FIELDS) if f.name == name.split(".")[-1])
        assert field.help in component.info
    assert not any(f.hidden for f in handlers.WIDGET_FIELDS)


def test_save_and_load_without_a_model_say_which_button(models):
    from dreambooth.errors import DreamboothError

    messages = []
    for press in (lambda: handlers.save_params("", handlers.default_values()), lambda: handlers.load_params("")):
        with pytest.raises(DreamboothError) as caught:
            press()
        messages.append(str(caught.value))
    assert messages[0].startswith("Save Params: no model selected")
    assert messages[1].startswith("Load Params: no model selected")


def test_generate_ckpt_uses_the_boxes_ticked_on_screen(tiny_model, demo_images):
    from pathlib import Path

    from conftest import quick_config
    from dreambooth.train.loop import Trainer

    Trainer(tiny_model, quick_config(demo_images, num_train_epochs=1, save_ckpt_after=False)).run()
    full = Path(handlers.generate_ckpt("tiny").split("checkpoint written: ")[1].split(" (")[0])
    half = Path(handlers.generate_ckpt("tiny", {"half_model": True, "use_subdir": True})
                .split("checkpoint written: ")[1].split(" (")[0])
    assert half.parent == full.parent / "tiny" and half.name == full.name.replace(".safetensors", "_half.safetensors")
    assert full.is_file() and half.is_file()  # neither replaced the other
    assert json.loads(tiny_model.config_file.read_text())["half_model"] is False  # the saved value is untouched
