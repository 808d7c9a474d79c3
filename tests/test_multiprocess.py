"""Data-parallel training under `accelerate launch` with two real CPU processes (gloo).

accelerate's `--cpu` flag starts one process unless MPI is set up; `--multi_gpu` on a machine without GPUs
starts the processes with torch.distributed.run and the trainer uses the gloo backend.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from conftest import quick_config

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(args, models_root, tmp_path, timeout=240):
    env = dict(os.environ, DREAMBOOTH_MODELS_DIR=str(models_root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HOME=str(tmp_path / "hf-home"),  # no user accelerate config
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), *args]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def test_two_processes_train_save_once_and_resume_exactly(tiny_model, demo_images, models_root, tmp_path):
    from dreambooth.service.operations import save_params
    from dreambooth.store import model_dir
    from dreambooth.monitor.metrics import read_metrics
    from dreambooth.train.snapshot import list_snapshots

    images = len(list(demo_images.glob("*.png")))
    steps_per_epoch = -(-images // PROCESSES)  # batch 1: each process takes every other image
    cfg = quick_config(demo_images, num_train_epochs=2)
    save_params("tiny", cfg)
    unbroken = model_dir("unbroken")
    shutil.copytree(tiny_model.path, unbroken.path)
    save_params("unbroken", cfg)

    # 1. the CLI under accelerate launch: 2 epochs; one checkpoint, one snapshot, one set of samples
    proc = _launch(["-m", "dreambooth", "train", "tiny"], models_root, tmp_path)
    first = 2 * steps_per_epoch
    assert f"done: {first} steps" in proc.stdout
    checkpoints = sorted(p.name for p in (models_root / "Stable-diffusion").iterdir())
    assert checkpoints == [f"tiny_{first}.safetensors"]
    assert [p.name for p in list_snapshots(tiny_model.snapshots)] == [f"snapshot-{first}"]
    assert sorted(p.name for p in tiny_model.samples.glob("*.png")) == [f"sample_{first}-0.png"]
    assert [row["step"] for row in read_metrics(tiny_model.logging)] == list(range(1, first + 1))

    # 2. resume to 3 epochs, and an unbroken 3-epoch run of a copy of the same start weights
    out = tmp_path / "ranks"
    out.mkdir()
    _launch([str(REPO / "tests" / "multiprocess_worker.py"), str(out), "tiny", "unbroken", "3"], models_root, tmp_path)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(PROCESSES)]
    for rank, record in enumerate(ranks):
        for run in ("resumed", "unbroken"):
            assert record[run]["processes"] == PROCESSES and record[run]["rank"] == rank
            assert record[run]["steps"] == 3 * steps_per_epoch
            assert record[run]["steps_per_epoch"] == steps_per_epoch
    assert ranks[0]["resumed"]["revision"] == 3 * steps_per_epoch
    assert len({r["resumed"]["digest"] for r in ranks}) == 1, "weights differ between processes"
    assert len({r["unbroken"]["digest"] for r in ranks}) == 1, "weights differ between processes"
    assert ranks[0]["resumed"]["digest"] == ranks[0]["unbroken"]["digest"], "resume is not exact"
    assert sorted(p.name for p in (models_root / "Stable-diffusion").iterdir()) == sorted(
        [f"tiny_{first}.safetensors", f"tiny_{3 * steps_per_epoch}.safetensors",
         f"unbroken_{3 * steps_per_epoch}.safetensors"])


def test_shard_groups_gives_every_process_the_same_number_of_steps():
    from dreambooth.train.plan import TrainPlan, shard_groups

    groups = [[[i]] for i in range(7)]
    shards = [shard_groups(groups, 3, rank) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    seen = [g[0][0] for s in shards for g in s]
    assert set(seen) == set(range(7)) and len(seen) == 9  # every group seen; the last round wraps round
    assert shard_groups(groups, 1, 0) == groups
    plan = TrainPlan(items=7, batch_size=1, accumulation=1, epochs=2, save_every=0, preview_every=0, processes=3)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6
