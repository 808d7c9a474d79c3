"""`python -m dreambooth bench` at a tiny size: it runs both loops and writes its record. Never a timing assertion."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_writes_the_record_with_both_ratios(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "dreambooth", "bench", "--preset", "tiny", "--resolution", "64", "--images", "4",
         "--steps", "3", "--warmup", "1", "--pairs", "1", "--threads", "1", "--workdir", str(tmp_path / "work"),
         "--out", str(out), "--scaling", "--scaling-sizes", "4", "--sample-steps", "2", "--lora", "--breakdown"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # a loaded shared CPU
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line is the JSON record
    assert last == json.loads(out.read_text())
    for key in ("speedup", "rss_ratio", "device", "steps", "batch"):
        assert key in last
    assert last["device"] in ("cpu", "cuda") and last["steps"] == 3 and last["batch"] == 1
    assert last["speedup"] > 0 and 0 < last["rss_ratio"] < 10
    for side in ("reference", "trainer"):
        assert last[side]["samples_per_s"] > 0 and last[side]["peak_rss_mb"] > 50
    rows = last["scaling"]["rows"]
    assert [row["images"] for row in rows] == [4]
    assert all(row["train_s_per_image"] > 0 and row["peak_rss_mb"] > 50 for row in rows)
    assert all(row["sample_s_per_image"] is not None and row["sample_s_per_image"] > 0 for row in rows)
    assert "speedup" in proc.stdout and "rss_ratio" in proc.stdout
    lora = last["lora"]  # the LoRA run against the trainer's full fine-tune
    assert lora["full"]["samples_per_s"] > 0 and lora["lora"]["samples_per_s"] > 0
    assert 0 < lora["rss_ratio"] < 10 and lora["speed_ratio"] > 0 and "LoRA / full" in proc.stdout
    parts = last["breakdown"]  # the reference's step part by part: every part timed, attention found in the UNet's
    assert all(parts[key] > 0 for key in ("data_s", "vae_encode_s", "text_encode_s", "unet_step_s"))
    assert 0 < parts["attention_share"] < 1 and "caching_ceiling" in proc.stdout
    whole = parts["data_s"] + parts["vae_encode_s"] + parts["text_encode_s"] + parts["unet_step_s"]
    assert abs(parts["caching_ceiling"] - whole / parts["unet_step_s"]) < 0.01 * parts["caching_ceiling"]


def test_bench_rejects_bad_step_counts(capsys):
    from dreambooth.tools.bench import main

    assert main(["--steps", "2", "--warmup", "2"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_cpu_attention_is_sdpa_and_compile_is_opt_in():
    from dreambooth.registry import FIELD_BY_NAME
    from dreambooth.model.tiny import build_components
    from dreambooth.model.attention import set_attention

    unet = build_components("tiny")["unet"]
    assert set_attention([unet], FIELD_BY_NAME["attention"].default, "cpu") == "sdpa"
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert FIELD_BY_NAME["compile_unet"].default is False
