"""The command line: the demo end to end, and every bad input exits 2 with one line, leaving nothing behind."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreambooth.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_demo_end_to_end(tmp_path):
    env = dict(os.environ, DREAMBOOTH_MODELS_DIR=str(tmp_path / "models"), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "dreambooth", "demo"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    wall = time.perf_counter() - started
    assert run.returncode == 0, run.stderr[-3000:]
    print(f"demo wall time: {wall:.1f} s")
    models = tmp_path / "models"
    # one checkpoint in the WebUI's list, the final one: no file per epoch (raised epochs would flood the list)
    assert len(list((models / "Stable-diffusion").glob("demo_*.safetensors"))) == 1
    assert list((models / "dreambooth" / "demo" / "samples").glob("*.png"))
    assert (models / "dreambooth" / "demo" / "logging" / "loss.png").is_file()
    assert "demo finished in" in run.stdout


def test_params_set_and_show(tiny_model, capsys):
    assert main(["params", "tiny", "--set", "learning_rate=3e-6", "--set", 'concepts_list=[{"instance_data_dir": "/d"}]']) == 0
    assert main(["params", "tiny"]) == 0
    out = capsys.readouterr().out
    assert '"learning_rate": 3e-06' in out and '"instance_data_dir": "/d"' in out
    assert main(["params", "tiny", "--show"]) == 0
    assert "lr_scheduler = 'constant_with_warmup'" in capsys.readouterr().out


def test_train_and_ckpt_through_the_cli(tiny_model, demo_images, models_root, capsys):
    assert main(["ckpt", "tiny"]) == 2  # nothing trained yet
    assert "has not been trained yet" in capsys.readouterr().err
    concepts = f'[{{"instance_data_dir": "{demo_images}", "instance_prompt": "sks toy", "n_save_sample": 0}}]'
    assert main(["train", "tiny", "--set", "num_train_epochs=1", "--set", "resolution=64", "--set", "seed=1",
                 "--set", "mixed_precision=no", "--set", f"concepts_list={concepts}"]) == 0
    assert main(["ckpt", "tiny", "--subdir"]) == 0
    full = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["ckpt", "tiny", "--half", "--subdir"]) == 0
    written = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert written.parent == models_root / "Stable-diffusion" / "tiny" and written.is_file()
    assert written.name == full.name.replace(".safetensors", "_half.safetensors") and full.is_file()  # both kept
    from safetensors import safe_open

    with safe_open(str(written), "pt") as f:
        key = next(k for k in f.keys() if k.startswith("model.diffusion_model."))
        assert str(f.get_tensor(key).dtype) == "torch.float16"


def _bad_sources(tmp: Path, tiny_checkpoint: Path) -> dict:
    empty = tmp / "empty.safetensors"
    empty.write_bytes(b"")
    text = tmp / "notes.safetensors"
    text.write_bytes(b"hello, this is not a checkpoint at all")
    truncated = tmp / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    return {"missing": tmp / "nope.safetensors", "empty": empty, "not-sd": text, "truncated": truncated}


@pytest.mark.parametrize("case", ["missing", "empty", "not-sd", "truncated"])
def test_create_bad_sources(case, models_root, tiny_checkpoint, tmp_path, capsys):
    source = _bad_sources(tmp_path, tiny_checkpoint)[case]
    assert main(["create", "m", "--source", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (models_root / "dreambooth" / "m").exists()
    assert not [p for p in _files(models_root) if "tmp" in p]


def test_create_refuses_pickle_that_runs_code(models_root, tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    assert main(["create", "m", "--source", str(evil)]) == 2
    assert not marker.exists()
    assert "error:" in capsys.readouterr().err
    assert not (models_root / "dreambooth" / "m").exists()


@pytest.mark.parametrize("args, fragment", [
    (["create", "../evil", "--source", "x"], "model name '../evil' is not allowed"),
    (["train", "tiny", "--set", "num_train_epochs=0"], "num_train_epochs = 0 is out of range"),
    (["train", "tiny", "--set", "train_batch_size=0"], "train_batch_size = 0 is out of range"),
    (["train", "tiny", "--set", "learning_rate=-1"], "learning_rate = -1.0 is out of range"),
    (["train", "tiny", "--set", "lr_scheduler=nope"], "lr_scheduler = 'nope' is out of range"),
    (["train", "tiny", "--set", 'concepts_list=[{"instance_data_dir": "/no/such/dir"}]'], "does not exist"),
    (["train", "ghost"], "model 'ghost' does not exist"),
])
def test_bad_input_exits_2_with_one_line(tiny_model, models_root, args, fragment, capsys):
    before = _files(models_root)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert _files(models_root) == before  # nothing half-written


def test_models_dir_before_or_after_the_command(tiny_model, models_root, monkeypatch, tmp_path, capsys):
    for args in (["list", "--models-dir", str(models_root)], ["--models-dir", str(models_root), "list"]):
        monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path / "elsewhere"))
        assert main(args) == 0
        assert capsys.readouterr().out.split() == ["tiny"]


def test_samples_from_the_saved_weights(tiny_model, demo_images, capsys):
    concepts = (f'[{{"instance_data_dir": "{demo_images}", "instance_prompt": "sks toy", "n_save_sample": 1, '
                '"sample_seed": 5, "save_infer_steps": 2}]')
    assert main(["params", "tiny", "--set", "resolution=64", "--set", f"concepts_list={concepts}"]) == 0
    capsys.readouterr()
    assert main(["samples", "tiny"]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split() if line.endswith(".png")]
    assert len(written) == 1 and written[0].is_file()
    assert written[0].with_suffix(".txt").read_text().startswith("sks toy\n")
    saved = (tiny_model.config_file).read_text()
    assert main(["samples", "tiny", "--set", "lora_model_name=../../dreambooth/tiny/db_config"]) == 2
    assert "lora_model_name" in capsys.readouterr().err  # --set reaches the samples, refused by name
    assert tiny_model.config_file.read_text() == saved  # and is never saved


@pytest.mark.parametrize("argv", [["--port", "7861"], ["--listen", "--port", "7861"], ["serve", "--port", "7861"]])
def test_serve_options_without_the_serve_command(argv, monkeypatch):
    import dreambooth.cli as cli

    seen = []
    monkeypatch.setitem(cli.COMMANDS, "serve", lambda args: seen.append((args.command, args.port)) or 0)
    assert main(argv) == 0
    assert seen == [("serve", 7861)]


def test_an_older_config_reports_its_unknown_keys_in_one_line(tiny_model, capsys):
    import json

    data = json.loads(tiny_model.config_file.read_text())
    older = {f"older_setting_{i}": i for i in range(58)}
    tiny_model.config_file.write_text(json.dumps({**data, **older}))
    assert main(["params", "tiny"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: 58 unknown keys kept as is but not used: 'older_setting_0'")
    assert "and 52 more" in err[0] and "--unknown" in err[0]
    assert main(["params", "tiny", "--unknown"]) == 0
    assert capsys.readouterr().out.split() == sorted(older)


def test_no_bitsandbytes_kernel_warning_on_a_command(tmp_path):
    # bitsandbytes >= 0.48 warns at import on CPUs with AVX512-BF16 (diffusers imports it); a command that
    # builds a model must not pass that on to the user
    run = subprocess.run([sys.executable, "-m", "dreambooth", "tiny-checkpoint", str(tmp_path / "t.safetensors")],
                         cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "gemm_4bit_forward" not in run.stderr and "kernels-community" not in run.stderr
