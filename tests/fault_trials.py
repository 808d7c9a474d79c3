"""kill -9 trials on the tiny model, driven by tests/test_faults.py: `python tests/fault_trials.py OUT.json ...`.

One process start serves every trial: this process imports the stack once (single-threaded, so forking is
safe), creates the model, then for each trial forks a child that runs the CLI's `train` (`--resume` when a
snapshot exists) exactly as `python -m dreambooth train` does, and kills it with SIGKILL at a seeded random
moment: during an optimizer step, a preview, a checkpoint export or a snapshot write. The child reports
when each phase begins through a pipe (test-side wrappers around the real functions; nothing is stubbed).

After each kill this process checks what a user would meet: the newest finished checkpoint loads, the
working weights load, no temporary file is offered as a source or listed as a snapshot, and the next run
removes the leftovers and resumes at the snapshot's step. A last `--resume` runs to the end: the step
count is the plan's. The report (JSON) holds every trial.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import signal
import sys
import time
import traceback
from pathlib import Path

PHASES = ("step", "sample", "checkpoint", "snapshot")
MAX_DELAY = {"step": 0.08, "sample": 0.3, "checkpoint": 0.04, "snapshot": 0.04}  # seconds after the phase begins
SETTINGS = {"num_train_epochs": 4, "save_embedding_every": 1, "save_preview_every": 1, "train_batch_size": 1,
            "learning_rate": 1e-4, "lr_scheduler": "constant", "mixed_precision": "no", "resolution": 64,
            "gradient_checkpointing": False, "seed": 7, "snapshots_to_keep": 1}
NAME = "faulty"


# the child: the CLI's train command, with phase reports ----------------------------------------------
def _install_reports(send) -> None:
    from dreambooth.convert import export
    from dreambooth.train import loop, saving, snapshot

    def reporting(owner, attr, before=None, after=None):
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            if before:
                send(before(*args))
            result = original(*args, **kwargs)
            if after:
                send(after(args, result))
            return result

        setattr(owner, attr, wrapper)

    reporting(loop.Trainer, "_optimizer_step", before=lambda self, group: f"step {self.global_step + 1}")
    reporting(loop.Trainer, "_restore", after=lambda args, result: f"resumed {args[0].global_step}")
    reporting(loop.Trainer, "run", after=lambda args, result: f"done {result.steps} {result.revision}")
    reporting(saving, "write_previews", before=lambda *a: "sample")
    reporting(export, "export_single_file", before=lambda *a: "checkpoint")
    reporting(snapshot, "save_snapshot", before=lambda *a: "snapshot")


def _child(argv: list[str], pipe: int, log: Path) -> None:
    code = 3
    try:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        _install_reports(lambda text: os.write(pipe, (text + "\n").encode()))
        from dreambooth.cli import main

        code = main(argv)
        os.write(pipe, f"exit {code}\n".encode())
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _events(fd: int, timeout: float):
    """Lines from the child's pipe until it closes (or `timeout` seconds pass without one)."""
    buffer = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no report from the training process for {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


def run_child(argv: list[str], log: Path, kill: tuple[str, int, float] | None, on_event=None) -> dict:
    """Fork a CLI run; kill it at the `kill` = (phase, n-th occurrence, delay) moment, if it comes."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(argv, write, log)
    os.close(write)
    seen, counts, killed, start = [], {}, False, time.perf_counter()
    try:
        for event in _events(read, timeout=300):
            seen.append(event)
            if os.environ.get("FAULT_TRIALS_TRACE"):  # timings of each phase, for tuning
                print(f"{time.perf_counter() - start:6.2f} {event}", file=sys.stderr)
            if on_event is not None:
                on_event(event)
            phase = event.split()[0]
            counts[phase] = counts.get(phase, 0) + 1
            if kill is not None and phase == kill[0] and counts[phase] == kill[1]:
                time.sleep(kill[2])
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)
    return {"events": seen, "killed": killed, "exit": os.waitstatus_to_exitcode(status)}


# checks in this process ----------------------------------------------------------------------------
def temp_files(*folders: Path) -> list[str]:
    from dreambooth.platform.leftovers import is_temp_name

    found = []
    for folder in folders:
        for top, dirs, files in os.walk(folder):
            found += [str(Path(top, n).relative_to(folder.parent)) for n in dirs + files if is_temp_name(n)]
    return sorted(found)


def listings_clean() -> bool:
    """What the tab, the API and the CLI list: sources, models, snapshots."""
    from dreambooth.service import operations
    from dreambooth.store import list_models, model_dir
    from dreambooth.train.snapshot import list_snapshots

    names = [p.name for p in operations.list_source_checkpoints()] + list_models()
    names += [p.name for p in list_snapshots(model_dir(NAME).snapshots)]
    return not any(".tmp" in n or n.startswith(".") for n in names)


def newest_checkpoint_loads() -> tuple[str | None, bool]:
    from safetensors.torch import load_file

    from dreambooth.platform import host

    pattern = re.compile(rf"^{NAME}_(\d+)\.safetensors$")
    folder = host.checkpoint_dir()
    files = folder.iterdir() if folder.is_dir() else []
    found = sorted((int(m.group(1)), p) for p in files if (m := pattern.match(p.name)))
    if not found:
        return None, True
    tensors = load_file(str(found[-1][1]))
    return found[-1][1].name, len(tensors) > 100 and all(t.isfinite().all() for t in tensors.values())


def working_loads() -> bool:
    from dreambooth.convert.checkpoint_io import load_state_dict
    from dreambooth.store import model_dir

    working = model_dir(NAME).working
    parts = [load_state_dict(working / c / f"{f}.safetensors")[0] for c, f in
             (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"))]
    json.loads((working / "unet" / "config.json").read_text())
    return all(len(p) > 0 for p in parts)


def snapshot_step() -> int | None:
    from dreambooth.store import model_dir
    from dreambooth.train.snapshot import latest_snapshot, load_snapshot

    path = latest_snapshot(model_dir(NAME).snapshots)
    return None if path is None else load_snapshot(path)["state"]["global_step"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # no thread pools in the parent: forking stays safe, and the box has 2 cores
    torch.set_num_interop_threads(1)
    # the whole stack, imported once for every trial (a child then starts in about a second)
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    from diffusers import DDPMScheduler, PNDMScheduler, StableDiffusionPipeline  # noqa: F401

    import dreambooth.cli  # noqa: F401
    import dreambooth.train.loop  # noqa: F401
    from dreambooth.platform import host
    from dreambooth.service.operations import create_model, load_params, save_params
    from dreambooth.store import model_dir

    create_model(NAME, args.source, progress=lambda message: None)
    cfg, _ = load_params(NAME)
    for key, value in SETTINGS.items():
        cfg.set(key, value)
    cfg.set("concepts_list", [{"instance_data_dir": str(args.images), "instance_prompt": "a photo of sks toy",
                               "n_save_sample": 1, "sample_seed": 3, "save_infer_steps": 2}])
    save_params(NAME, cfg)
    images = len(list(args.images.glob("*.png")))
    total_steps = SETTINGS["num_train_epochs"] * images  # batch 1, no accumulation
    model, logs = model_dir(NAME), args.out.parent
    rng = random.Random(args.seed)
    trials, started = [], time.perf_counter()
    for index in range(args.trials):
        phase = PHASES[index % len(PHASES)]
        nth = rng.randint(1, 2 * images) if phase == "step" else rng.randint(1, 2)
        delay = round(rng.uniform(0, MAX_DELAY[phase]), 4)
        expected = snapshot_step()
        argv = ["train", NAME] + (["--resume"] if expected is not None and expected < total_steps else [])
        leftovers_before = temp_files(model.path, host.checkpoint_dir())
        at_start = {}

        def on_event(event, at_start=at_start):  # the first report: the run has cleaned up and (re)started
            if not at_start:
                at_start["event"] = event
                at_start["temps"] = temp_files(model.path, host.checkpoint_dir())

        outcome = run_child(argv, logs / f"trial-{index:02d}.log", (phase, nth, delay), on_event)
        resumed = [int(e.split()[1]) for e in outcome["events"] if e.startswith("resumed")]
        first_steps = [int(e.split()[1]) for e in outcome["events"] if e.startswith("step")][:1]
        name, loads = newest_checkpoint_loads()
        trials.append({
            "trial": index, "phase": phase, "nth": nth, "delay_s": delay, "argv": argv,
            "killed": outcome["killed"], "exit": outcome["exit"], "last_event": (outcome["events"] or ["-"])[-1],
            "leftovers_before": leftovers_before, "temps_at_next_start": at_start.get("temps"),
            "temps_after": temp_files(model.path, host.checkpoint_dir()),
            "expected_resume_step": expected if "--resume" in argv else None,
            "resumed_step": resumed[0] if resumed else None,
            "first_step": first_steps[0] if first_steps else None,
            "newest_checkpoint": name, "checkpoint_loads": loads, "working_loads": working_loads(),
            "listings_clean": listings_clean(),
        })
    final_argv = ["train", NAME, "--resume"] if snapshot_step() not in (None, total_steps) else None
    final = run_child(final_argv, logs / "final.log", None) if final_argv else {"events": [], "exit": 0}
    done = [e for e in final["events"] if e.startswith("done")]
    report = {
        "trials": trials, "seconds": round(time.perf_counter() - started, 1), "total_steps": total_steps,
        "final": {"argv": final_argv, "exit": final["exit"], "done": done[-1] if done else None,
                  "resumed": [e for e in final["events"] if e.startswith("resumed")],
                  "snapshot_step": snapshot_step(), "temps": temp_files(model.path, host.checkpoint_dir()),
                  "newest_checkpoint": newest_checkpoint_loads(), "listings_clean": listings_clean()},
    }
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
