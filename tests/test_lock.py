"""The model lock across processes: two trains → one refused (CLI exit 2, API 409, tab message), naming the
holder; a killed holder's lock is taken over; Generate Ckpt during training goes to the trainer."""
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dreambooth.platform import modellock
from dreambooth.api import PREFIX, register_routes
from dreambooth.cli import main

REPO = Path(__file__).resolve().parents[1]


def hold_lock_in_another_process(folder: Path, action: str = "train") -> subprocess.Popen:
    """A second process holding the model's lock (as a running `train` does), started without torch."""
    code = ("import sys, time; from pathlib import Path; from dreambooth.platform.modellock import model_lock\n"
            f"with model_lock(Path({str(folder)!r}), {action!r}):\n"
            "    print('locked', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_two_cli_trains_one_refused(tiny_model, demo_images, models_root, capsys):
    """A real `python -m dreambooth train` holds the model; a second train, ckpt and params --set are refused."""
    concepts = json.dumps([{"instance_data_dir": str(demo_images), "instance_prompt": "sks", "n_save_sample": 0}])
    assert main(["params", "tiny", "--set", f"concepts_list={concepts}", "--set", "num_train_epochs=500",
                 "--set", "resolution=64", "--set", "mixed_precision=no", "--set", "gradient_checkpointing=false",
                 "--set", "save_embedding_every=0"]) == 0
    first = subprocess.Popen([sys.executable, "-m", "dreambooth", "train", "tiny"], cwd=str(models_root.parent),
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while "by pid" not in (modellock.holder(tiny_model.path) or ""):  # locked, and its details written
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        capsys.readouterr()
        for argv in (["train", "tiny"], ["ckpt", "tiny"], ["params", "tiny", "--set", "learning_rate=1e-5"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            print(f"\n{' '.join(argv)} while another process trains → exit 2: {err}")
            assert err.count("\n") == 0 and "is busy: train by pid" in err and str(first.pid) in err
        assert main(["params", "tiny"]) == 0  # reading is always allowed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert modellock.holder(tiny_model.path) is None  # the kernel dropped the dead holder's lock
    assert main(["params", "tiny", "--set", "learning_rate=1e-5"]) == 0


def test_lock_taken_over_from_a_dead_or_reused_pid(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    lock_file = folder / modellock.LOCK_FILE
    for pid in (999_999_999, os.getpid()):  # a dead pid, and a live pid that holds no lock (reused)
        lock_file.write_text(json.dumps({"pid": pid, "host": "here", "action": "train", "since": 0}))
        assert modellock.holder(folder) is None
        with modellock.model_lock(folder, "params"):
            info = json.loads(lock_file.read_text())
            assert info["pid"] == os.getpid() and info["action"] == "params" and info["process_started"]
        assert lock_file.read_text() == ""


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with modellock.model_lock(tmp_path, "train"):
        with pytest.raises(modellock.ModelBusyError, match=r"busy: train by pid \d+ \(this process\)"):
            with modellock.model_lock(tmp_path, "Generate Ckpt"):
                pass


def api_client():
    app = FastAPI()
    register_routes(app, api_auth=None)
    return TestClient(app)


def test_api_and_tab_refuse_while_another_process_holds_it(tiny_model, demo_images, monkeypatch):
    from dreambooth.ui import handlers

    monkeypatch.setenv("DREAMBOOTH_DATA_ROOTS", str(demo_images))
    holder = hold_lock_in_another_process(tiny_model.path)
    try:
        concepts = [{"instance_data_dir": str(demo_images), "n_save_sample": 0}]
        client = api_client()
        for path, body in (("/start_training", {"params": {"concepts_list": concepts}}), ("/checkpoint", {}),
                           ("/params", {"params": {"learning_rate": 1e-5}})):
            answer = client.post(PREFIX + path, json={"model_name": "tiny", **body})
            print(f"\nPOST {path} while another process trains → {answer.status_code}: {answer.json()['error']}")
            assert answer.status_code == 409 and f"train by pid {holder.pid}" in answer.json()["error"]
        values = {**handlers.default_values(), handlers.concept_key(0, "instance_data_dir"): str(demo_images)}
        with pytest.raises(modellock.ModelBusyError, match=f"pid {holder.pid}"):
            handlers.train("tiny", values)
        with pytest.raises(modellock.ModelBusyError):
            handlers.save_params("tiny", values)
    finally:
        holder.kill()
        holder.wait(30)


def test_ckpt_during_training_goes_to_the_trainer(tiny_model, monkeypatch):
    """The API (like the tab) asks the running trainer for a save instead of writing the file beside it."""
    import threading

    from dreambooth.config import TrainConfig
    from dreambooth.service.jobs import runner

    release = threading.Event()

    def fake_train(name, cfg, control, resume=False):  # stands in for a long training run of this model
        release.wait(30)
        return None

    job = runner().start_training("tiny", TrainConfig(), train_fn=fake_train)
    try:
        answer = api_client().post(PREFIX + "/checkpoint", json={"model_name": "tiny"})
        assert answer.status_code == 202 and "save requested" in answer.json()["message"]
        assert job.control.save_requested.is_set()
    finally:
        release.set()
        runner().wait(30)


@pytest.mark.skipif(modellock.fcntl is None, reason="flock is POSIX-only")
def test_refusal_waits_for_a_new_holders_details(tmp_path):
    """A holder that has just taken the lock writes its details a moment later: the refusal names it anyway."""
    code = ("import fcntl, json, os, sys, time\n"
            f"fd = os.open({str(tmp_path / modellock.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(0.4)\n"
            "os.write(fd, json.dumps({'pid': os.getpid(), 'action': 'train', 'host': 'h', 'since': 0}).encode())\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(modellock.ModelBusyError, match=rf"busy: train by pid {proc.pid} "):
            modellock.check_free(tmp_path)
    finally:
        proc.kill()
        proc.wait(30)
