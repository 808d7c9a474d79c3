"""What the tab tells a newcomer, on the real tiny model: charts during training and TensorBoard events,
progress of long phases, every preview in the gallery with its step and prompt, the Wizard's marks and
the model's own resolution, a model switch that loads params only when nothing was edited, Create from a
Hugging Face Hub id read from a local cache, no repeated log lines."""
import hashlib
import json
import os
import shutil
import struct
import threading

import pytest

from conftest import quick_config
from dreambooth.errors import DreamboothError
from dreambooth.monitor import tensorboard
from dreambooth.monitor.metrics import MetricsLog, read_metrics
from dreambooth.train import loop
from dreambooth.train.control import TrainControl, TrainStatus
from dreambooth.train.loop import Trainer
from dreambooth.ui import handlers, live
from dreambooth.ui.handlers import concept_key


class Recorder(TrainControl):
    """A control that keeps every status update the loop makes, in order."""

    def __init__(self):
        super().__init__()
        self.updates = []

    def update(self, **changes):
        super().update(**changes)
        self.updates.append(changes)


# TensorBoard events -------------------------------------------------------------------------------
def _varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data):
    """Protobuf wire format, decoded independently of the writer: [(field number, value)]."""
    pos, out = 0, []
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<d", data, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<f", data, pos)[0], pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


def read_events(path):
    """[(step, {tag: value})] plus the file version, checking every record's framing and CRCs."""
    data, pos, events, version = path.read_bytes(), 0, [], None
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == tensorboard.masked_crc(header)
        record = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == tensorboard.masked_crc(record)
        pos += 16 + length
        event = dict(_fields(record))
        if 3 in event:
            version = event[3].decode()
            continue
        scalars = {}
        for number, value in _fields(event[5]):
            fields = dict(_fields(value))
            scalars[fields[1].decode()] = fields[2]
        events.append((event[2], scalars))
    return version, events


def test_crc32c_is_the_castagnoli_checksum():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert tensorboard.crc32c(b"") == 0


def test_training_writes_charts_during_the_run_and_tensorboard_events(tiny_model, one_image, monkeypatch):
    monkeypatch.setattr(loop, "LOG_EVERY", 2)  # flush metrics every 2 steps
    monkeypatch.setattr(loop, "CHART_EVERY_S", 0.0)  # and redraw the charts at every flush
    control = Recorder()
    result = Trainer(tiny_model, quick_config(one_image, num_train_epochs=5), control).run()  # 5 steps, no previews
    chart_updates = [i for i, u in enumerate(control.updates) if u.get("charts")]
    step_at = [max([u["step"] for u in control.updates[:i] if "step" in u] or [0]) for i in chart_updates]
    assert any(step < result.steps for step in step_at), step_at  # drawn while training, not only at the end
    from PIL import Image

    for path in result.charts:
        assert Image.open(path).size == (640, 300)  # drawn for a ~600 px column: fonts stay readable
    rows = read_metrics(tiny_model.logging)
    files = list(tiny_model.logging.glob("events.out.tfevents.*"))
    assert len(files) == 1
    version, events = read_events(files[0])
    assert version == "brain.Event:2"
    assert [step for step, _ in events] == [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    for (step, scalars), row in zip(events, rows):
        assert scalars["train/loss"] == pytest.approx(row["loss"], rel=1e-6)
        assert scalars["train/lr"] == pytest.approx(row["lr"], rel=1e-6)
        assert scalars["memory/RAM_MB"] == pytest.approx(row["memory_mb"], rel=1e-6)  # labelled RAM on a CPU
    # a resumed run adds a file; a new run starts its events afresh, as metrics.jsonl does
    MetricsLog(tiny_model.logging, keep_until=3)
    assert len(list(tiny_model.logging.glob("events.out.tfevents.*"))) == 2
    MetricsLog(tiny_model.logging)
    files = list(tiny_model.logging.glob("events.out.tfevents.*"))
    assert len(files) == 1 and read_events(files[0])[1] == [] and read_metrics(tiny_model.logging) == []


def test_tensorboard_itself_reads_the_events(tmp_path):
    """Checked against TensorBoard's own reader where it is installed (it is not a dependency)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from dreambooth.monitor.metrics import tensorboard_scalars

    writer = tensorboard.EventWriter(tmp_path)
    writer.add([(step, tensorboard_scalars({"loss": 1.0 / step, "lr": 1e-4, "memory_mb": 500.0 + step,
                                            "memory_kind": "VRAM"})) for step in (1, 2, 3)])
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.step for e in events.Scalars("memory/VRAM_MB")] == [1, 2, 3]


def test_chart_labels_say_ram_or_vram():
    from dreambooth.monitor.charts import chart_series

    rows = [{"step": 1, "loss": 0.5, "lr": 1e-4, "memory_mb": 100.0, "memory_kind": "RAM (RSS)"}]
    memory = chart_series(rows)[2]
    assert memory[1] == "Memory (RAM)" and memory[2] == "RAM (MB)"
    assert chart_series([{**rows[0], "memory_kind": "VRAM"}])[2][1] == "Memory (VRAM)"
    loss = chart_series(rows * 20)[0]
    assert len(loss[3]) == 2 and loss[3][1][1].startswith("smoothed")  # raw and smoothed lines


# progress of long phases -----------------------------------------------------------------------------
def test_long_phases_report_their_progress_and_the_gallery_keeps_every_preview(tiny_model, one_image,
                                                                             models_root):
    control = Recorder()
    cfg = quick_config(one_image, num_train_epochs=2, save_preview_every=1, save_embedding_every=1,
                       epoch_pause_frequency=1, epoch_pause_time=2)
    concept = cfg.concepts_list[0]
    cfg.set("concepts_list", [{**concept, "num_class_images_per": 1, "class_prompt": "a photo of a toy",
                               "class_infer_steps": 2}])
    Trainer(tiny_model, cfg, control).run()
    details = [u["detail"] for u in control.updates if u.get("detail")]
    assert "class image 1 of 1, step 2 of 2" in details
    assert "encoding images 2 of 2" in details  # the instance and the class image
    assert "image 1 of 1, step 2 of 2" in details  # a preview: image i of n, step k of m
    assert "2 s left" in details and "1 s left" in details  # the pause counts down
    assert {"writing working weights", "writing checkpoint", "writing resume snapshot"} <= set(details)
    # each phase starts without the previous one's progress
    assert any(u.get("state") == "training" and u.get("detail") == "" for u in control.updates)

    # every preview of the selected model, newest first, with its step and prompt
    gallery = live.model_gallery("tiny")
    assert [caption for _, caption in gallery] == ["step 2: a photo of sks toy", "step 1: a photo of sks toy"]
    assert all(os.path.isfile(path) for path, _ in gallery)
    charts = live.model_charts("tiny")
    assert [os.path.basename(p) for p in charts] == ["loss.png", "lr.png", "memory.png"]
    # another model: its own (empty) gallery and no charts, not the previous model's
    shutil.copytree(tiny_model.path / "working", models_root / "dreambooth" / "other" / "working")
    shutil.copy(tiny_model.config_file, models_root / "dreambooth" / "other" / "db_config.json")
    assert live.model_gallery("other") == [] and live.model_charts("other") == [None, None, None]


def test_status_line_shows_the_phase_progress_and_keeps_numbers_whole():
    text = live.status_text(TrainStatus(state="sampling", model_name="m", step=6, total_steps=12,
                                            detail="image 1 of 2, step 4 of 10"))
    assert text.startswith("sampling: m · image 1 of 2, step 4 of 10")
    text = live.status_text(TrainStatus(state="training", model_name="m", step=6, total_steps=12,
                                            it_per_s=1.5, memory_mb=545, memory_kind="RAM (RSS)", detail="stale"))
    assert "stale" not in text  # no phase progress while training
    assert "1.50\u00a0it/s" in text and "545\u00a0MB" in text
    assert live.status_text(TrainStatus(state="running", model_name="m", detail="image 1 of 1"),
                                "samples") == "samples running: m · image 1 of 1"


# the Wizard --------------------------------------------------------------------------------------------
def test_wizard_works_from_folders_on_screen_and_keeps_the_models_resolution(tiny_model, demo_images, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_DATA_ROOTS", str(demo_images))  # the tab may read this folder
    assert handlers.made_for_resolution("tiny") == 64  # what the tiny checkpoint's UNet was built for
    values = {**handlers.default_values(), concept_key(0, "instance_data_dir"): str(demo_images),
              "resolution": 512}
    assert not operations_concepts("tiny")  # nothing saved: the folder on screen is enough
    changes, text = handlers.wizard("tiny", values, 0)
    assert changes["resolution"] == 64 and "resolution 512 → 64" in text
    assert "the size this model was made for" in text
    values["resolution"] = 64
    changes, _ = handlers.wizard("tiny", values, 0)
    assert "resolution" not in changes  # nothing to change: not marked


def operations_concepts(model):
    from dreambooth.service import operations

    return operations.load_params(model)[0].concepts_list


# selecting a model --------------------------------------------------------------------------------------
def test_selecting_a_model_loads_its_params_only_when_nothing_was_edited(tiny_model, demo_images, models_root):
    from dreambooth.service import operations

    cfg, _ = operations.load_params("tiny")
    cfg.set("num_train_epochs", 7)
    operations.save_params("tiny", cfg)
    on_screen = handlers.default_values()  # a fresh page: the defaults, nothing edited
    values, text = handlers.params_on_select("tiny", None, on_screen)
    assert values["num_train_epochs"] == 7 and "loaded" in text
    edited = {**values, "learning_rate": 3e-6}
    shutil.copytree(tiny_model.path, models_root / "dreambooth" / "second")
    kept, text = handlers.params_on_select("second", "tiny", edited)
    assert kept is None and "learning_rate" in text and "Load Params" in text
    assert handlers.edited_fields(edited, handlers.shown_baseline("tiny")) == ["learning_rate"]
    assert handlers.edited_fields({**values, "num_train_epochs": 7.0}, handlers.shown_baseline("tiny")) == []


def test_save_params_during_training_says_the_running_job_is_unaffected(tiny_model):
    from dreambooth.config import TrainConfig
    from dreambooth.service.jobs import runner

    release = threading.Event()
    job = runner().start_training("tiny", TrainConfig(), train_fn=lambda *a, **k: release.wait(30))
    try:
        message = handlers.save_params("tiny", handlers.default_values())
        assert "the running training of 'tiny' keeps the values it started with" in message
    finally:
        release.set()
        job.finished.wait(30)


def test_the_same_line_twice_is_logged_once():
    from dreambooth.service.jobs import JobRunner

    jobs = JobRunner()
    jobs.note("cancel requested: training stops after the current step")
    jobs.note("cancel requested: training stops after the current step")
    jobs.note("something else")
    assert [line.split(" ", 1)[1] for line in jobs.log_lines()] == [
        "cancel requested: training stops after the current step", "something else"]


# Create from a Hugging Face Hub id -------------------------------------------------------------------------
def hub_cache(root, repo_id, folder):
    """A Hugging Face cache as the hub library writes it: blobs named by hash, snapshots/<commit>/ of
    links to them, refs/main naming the commit."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_create_from_a_hub_id_reads_the_local_cache_offline(tiny_model, models_root, tmp_path, monkeypatch):
    from dreambooth.convert.diffusers_io import load_components

    cache = tmp_path / "hf"
    hub_cache(cache, "someone/tiny-sd", tiny_model.working)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = handlers.create_model("from-hub", "", "detect", hub_id="someone/tiny-sd", hub_token="hf_unused")
    assert "created" in message
    unet = load_components(models_root / "dreambooth" / "from-hub" / "working")[0]
    assert unet.config.sample_size == 8
    with pytest.raises(DreamboothError) as error:
        handlers.create_model("missing", "", "detect", hub_id="someone/not-cached")
    assert error.value.field == "hub_id" and "HF_HUB_OFFLINE" in str(error.value)
    assert not (models_root / "dreambooth" / "missing").exists()
    assert "hf_unused" not in json.dumps(json.loads((models_root / "dreambooth" / "from-hub" / "db_config.json")
                                                    .read_text()))  # the token is never saved
    # the command line takes the same id
    from dreambooth import cli

    assert cli.main(["create", "cli-hub", "--source", "someone/tiny-sd", "--hub-token", "hf_unused"]) == 0
    assert (models_root / "dreambooth" / "cli-hub" / "working" / "unet").is_dir()
