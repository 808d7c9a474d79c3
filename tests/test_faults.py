"""kill -9 at random moments of a CLI `train` on the tiny model: nothing finished is lost, no temporary file
is ever listed, `--resume` continues at the snapshot's step (tests/fault_trials.py runs the trials).

DREAMBOOTH_FULL_FAULTS=1 (test.sh sets it on the first stack) runs 20 trials; otherwise a 3-trial smoke run.
"""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

SCRIPT = Path(__file__).with_name("fault_trials.py")
REPO = SCRIPT.parents[1]


def test_kill_9_trials(tmp_path, fault_trials, tiny_checkpoint, demo_images):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(demo_images.glob("*.png"))[:4]:
        shutil.copy(path, images)
    out = tmp_path / "report.json"
    env = {**os.environ, "DREAMBOOTH_MODELS_DIR": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), "--trials", str(fault_trials), "--seed", "9",
                          "--images", str(images), "--source", str(tiny_checkpoint)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    trials = report["trials"]
    killed = [t for t in trials if t["killed"]]
    print(f"\nkill -9 trials: {len(trials)} run, {len(killed)} killed "
          f"({dict(Counter(t['phase'] for t in killed))}), "
          f"{sum(bool(t['temps_after']) for t in trials)} left temporary files (removed at the next start), "
          f"{sum(t['resumed_step'] is not None for t in trials)} resumed; {report['seconds']} s")
    assert len(trials) == fault_trials
    assert len({t["phase"] for t in killed}) >= min(fault_trials, 4) - 1  # kills in (nearly) every phase
    for trial in trials:
        where = f"trial {trial['trial']} ({trial['phase']})"
        assert trial["checkpoint_loads"] and trial["working_loads"], where  # the last finished save is intact
        assert trial["listings_clean"], where  # no temporary file is offered as a source, model or snapshot
        # the next run removed the killed run's leftovers (temp names are random: a temp seen then is the
        # new run's own write in flight, e.g. metrics.jsonl being reset)
        assert not set(trial["leftovers_before"] or []) & set(trial["temps_at_next_start"] or []), where
        if trial["expected_resume_step"] is not None:
            assert trial["resumed_step"] == trial["expected_resume_step"], where
            assert trial["first_step"] in (None, trial["expected_resume_step"] + 1), where
    if fault_trials >= 8:
        assert any(t["temps_after"] for t in trials)  # some kills really landed inside a write
    final = report["final"]
    if final["argv"]:
        assert final["exit"] == 0 and final["done"].split()[1] == str(report["total_steps"]), final
    assert final["snapshot_step"] == report["total_steps"]
    assert final["temps"] == [] and final["listings_clean"] and final["newest_checkpoint"][1]
