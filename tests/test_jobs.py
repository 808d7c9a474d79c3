"""The job runner with real tiny-model training: one job at a time, cancel mid-run, samples on request,
host hooks around training, Generate Ckpt after it, status kept after the job ends."""
import contextlib
import time

import pytest

from dreambooth.platform import host
from dreambooth.service import operations
from dreambooth.tools.demo import DEMO_SETTINGS
from dreambooth.errors import DreamboothError
from dreambooth.service.jobs import runner
from dreambooth.ui import handlers


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs") / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DREAMBOOTH_MODELS_DIR", str(root))
        source = operations.ensure_embedded_source()
        operations.create_model("j1", source, progress=lambda message: None)
        yield "j1"


def config(**changes):
    cfg, _ = operations.load_params("j1")
    for key, value in {**DEMO_SETTINGS, **changes}.items():
        cfg.set(key, value)
    cfg.set("concepts_list", [{"instance_data_dir": str(operations.demo_instance_dir()),
                               "instance_prompt": "a photo of sks toy", "n_save_sample": 1, "sample_seed": 3,
                               "save_infer_steps": 2}])
    return cfg


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def host_hooks(monkeypatch):
    entered = []

    def hook(name):
        @contextlib.contextmanager
        def manager(on_wait=None):
            entered.append(f"{name}+")
            yield
            entered.append(f"{name}-")
        return manager

    monkeypatch.setattr(host, "vram_released", hook("vram"), raising=False)
    monkeypatch.setattr(host, "generation_lock", hook("lock"), raising=False)
    refreshed = []
    monkeypatch.setattr(host, "refresh_checkpoints", lambda: refreshed.append(1))
    return entered, refreshed


def test_train_one_job_at_a_time_then_ckpt(model, host_hooks):
    entered, refreshed = host_hooks
    job = runner().start_training(model, config(save_embedding_every=0))
    with pytest.raises(DreamboothError) as refused:
        runner().start_training(model, config())
    assert refused.value.field == "job" and "already running" in str(refused.value)
    with pytest.raises(DreamboothError):
        handlers.train(model, handlers.default_values())
    assert job.finished.wait(300)
    status = runner().status()
    assert status.state == "done", (status.message, status.log[-5:])
    assert status.epoch == 2 and status.step == status.total_steps > 0
    assert status.samples and status.charts
    assert entered == ["lock+", "vram+", "vram-", "lock-"]  # model freed only inside the lock
    assert not runner().busy()
    assert runner().status().state == "done"  # kept for the tab after the job ends (Reload UI)
    message = handlers.generate_ckpt(model)
    path = message.split("checkpoint written: ")[1].split(" (")[0]
    assert path.endswith(".safetensors") and host.checkpoint_dir() in __import__("pathlib").Path(path).parents
    assert refreshed
    assert any(path.endswith(name) or name in path for name in handlers.source_choices())


def test_cancel_mid_run_and_samples_on_request(model, host_hooks):
    job = runner().start_training(model, config(num_train_epochs=200, save_preview_every=0, save_embedding_every=0))
    wait_for(lambda: runner().status().step >= 1)
    assert "samples requested" in handlers.generate_samples(model, handlers.default_values())[1]
    wait_for(lambda: runner().status().samples)
    assert "save requested" in handlers.generate_ckpt(model)
    with pytest.raises(DreamboothError):
        with runner().exclusive("checkpoint", model):
            pass
    assert "cancel requested" in handlers.cancel()
    assert job.finished.wait(300)
    status = runner().status()
    assert status.state == "canceled" and status.step < status.total_steps
    assert "nothing to cancel" in handlers.cancel()


def test_a_crash_in_training_is_reported_and_the_runner_recovers(model):
    def broken(name, cfg, control, resume=False):
        control.update(state="training")
        raise RuntimeError("CUDA error: out of memory")

    job = runner().start_training(model, config(), train_fn=broken)
    assert job.finished.wait(30)
    status = runner().status()
    assert status.state == "failed" and "out of memory" in status.message
    assert any("training failed" in line for line in runner().log_lines())
    assert not runner().busy()


def test_generate_ckpt_during_training_uses_the_boxes_ticked_on_screen(model, host_hooks):
    """Found in the real WebUI: the mid-training save ignored Half ticked on screen (and needs no
    save_ckpt_during: the button asked for a checkpoint)."""
    from pathlib import Path

    from safetensors import safe_open

    job = runner().start_training(model, config(num_train_epochs=200, save_preview_every=0, save_embedding_every=0,
                                                save_ckpt_during=False, half_model=False))
    try:
        wait_for(lambda: runner().status().step >= 1)
        message = handlers.generate_ckpt(model, {"half_model": True, "use_subdir": True})
        assert "half-precision checkpoint is written at the next step" in message
        wait_for(lambda: runner().status().checkpoints)
    finally:
        handlers.cancel()
        assert job.finished.wait(300)
    written = [p for p in runner().status().checkpoints if "_half" in p]
    assert len(written) >= 1
    path = Path(written[0])
    assert path.parent.name == model and path.parent.parent == host.checkpoint_dir()  # the subdirectory box
    with safe_open(str(path), "pt") as tensors:
        unet_keys = [key for key in tensors.keys() if key.startswith("model.diffusion_model.")]
        assert {str(tensors.get_tensor(key).dtype) for key in unet_keys} == {"torch.float16"}


def test_a_refused_name_never_becomes_the_job_the_status_poll_reads(model, tmp_path):
    """Found in the real WebUI: Create with '../x' left a failed job named '../x'; every status poll then
    raised in the Resume label (HTTP 500 once a second) until a model was selected."""
    from dreambooth.ui.tab import Tab

    source = operations.ensure_embedded_source()
    with pytest.raises(DreamboothError) as error:
        handlers.create_model("../x", str(source))
    assert error.value.field == "model_name"
    assert runner().status().model_name != "../x" and (runner().status_dict()["job"] or {}).get("model_name") != "../x"
    assert handlers.resume_label("../x").startswith("Resume (no snapshot yet")  # and any name the poll gets
    tab = Tab()
    tab.build()
    tab._poll(None, None)  # the page's poll with no model selected
