"""A full disk: one line naming the folder, its free space and roughly what the save needs; exit 2; nothing
half-written. On a real small filesystem (a tmpfs, where this test may mount one) and with ENOSPC injected
at write time (everywhere)."""
import errno
import json
import os
import shutil
import subprocess

import pytest

from dreambooth.cli import main
from dreambooth.platform.leftovers import is_temp_name


def temps(*folders) -> list:
    return [name for folder in folders for _, dirs, files in os.walk(folder) for name in dirs + files
            if is_temp_name(name)]


def one_line_error(capsys) -> str:
    """The one `error:` line (training also logs its progress on stderr); never a traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def trained(tiny_model, one_image, models_root):
    """The tiny model after one short run (revision > 0, a checkpoint on disk)."""
    from conftest import quick_config
    from dreambooth.service.operations import train_model

    cfg = quick_config(one_image, num_train_epochs=1, save_state_after=False)
    train_model("tiny", cfg)
    return tiny_model


def test_enospc_at_write_time(trained, models_root, monkeypatch, capsys):
    import safetensors.torch

    checkpoints = models_root / "Stable-diffusion"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    config_before = trained.config_file.read_text()

    def full_disk(tensors, filename, metadata=None):  # half a file, then the device is full
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert main(["ckpt", "tiny", "--half"]) == 2
    err = one_line_error(capsys)
    print(f"\nckpt on a full disk (injected) → exit 2: {err}")
    assert f"not enough disk space in {checkpoints}" in err and " free, " in err and "needs about" in err
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before  # nothing new, nothing half-written

    def full_disk_bytes(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr("pathlib.Path.write_bytes", full_disk_bytes)
    assert main(["params", "tiny", "--set", "learning_rate=1e-5"]) == 2
    err = one_line_error(capsys)
    assert f"not enough disk space in {trained.path}" in err
    monkeypatch.undo()
    assert trained.config_file.read_text() == config_before
    assert temps(trained.path, checkpoints) == []


def test_train_stops_on_enospc_in_a_snapshot(tiny_model, one_image, models_root, monkeypatch, capsys):
    import torch

    concepts = json.dumps([{"instance_data_dir": str(one_image), "n_save_sample": 0}])
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    argv = ["train", "tiny", "--set", f"concepts_list={concepts}", "--set", "num_train_epochs=1",
            "--set", "resolution=64", "--set", "mixed_precision=no", "--set", "gradient_checkpointing=false"]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"not enough disk space in {tiny_model.snapshots}" in err and "needs about" in err
    assert temps(tiny_model.path, models_root / "Stable-diffusion") == []
    assert not list(tiny_model.snapshots.glob("snapshot-*"))  # no half snapshot
    json.loads(tiny_model.config_file.read_text())


def test_refused_before_writing_when_the_size_is_known(trained, models_root, monkeypatch, capsys):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    wrote = []
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: wrote.append(a))
    assert main(["ckpt", "tiny"]) == 2
    err = one_line_error(capsys)
    assert "1.0 MB free" in err and "needs about" in err and not wrote


def _mount_tmpfs(folder, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_small_filesystem(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """The models folder on a 48 MB tmpfs: Create fits; then the disk is filled and every command says so."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "48m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the injected ENOSPC tests cover this")
    try:
        monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(mount / "models"))
        assert main(["create", "tiny", "--source", str(tiny_checkpoint)]) == 0
        model = mount / "models" / "dreambooth" / "tiny"
        config_before = (model / "db_config.json").read_text()
        free = shutil.disk_usage(mount).free
        with open(mount / "filler", "wb") as handle:  # leave a few KB
            handle.write(b"\0" * (free - 8192))
        capsys.readouterr()
        assert main(["params", "tiny", "--set", "learning_rate=1e-5", "--set", "concepts_list=" + json.dumps(
            [{"instance_prompt": "x" * 20000}])]) == 2
        err = one_line_error(capsys)
        print(f"\nparams --set on a full tmpfs → exit 2: {err}")
        assert f"not enough disk space in {model}" in err
        assert (model / "db_config.json").read_text() == config_before
        assert main(["create", "again", "--source", str(tiny_checkpoint)]) == 2
        err = one_line_error(capsys)
        print(f"create on a full tmpfs → exit 2: {err}")
        assert "not enough disk space in" in err and "needs about 19.9 MB" in err
        assert temps(mount) == [] and not (mount / "models" / "dreambooth" / "again").exists()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
