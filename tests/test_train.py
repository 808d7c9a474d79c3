"""The trainer on the real tiny model: loss falls, intervals, resume, cancel, corrupt images, pauses."""
import json

import pytest
import torch
from data_helpers import require_bitsandbytes_on_cpu

from conftest import quick_config
from dreambooth.errors import DreamboothError
from dreambooth.train.control import TrainControl
from dreambooth.train.loop import Trainer
from dreambooth.monitor.metrics import read_metrics
from dreambooth.train.plan import TrainPlan
from dreambooth.train.snapshot import list_snapshots


def _unet_weights(model):
    from safetensors.torch import load_file

    return load_file(str(model.working / "unet" / "diffusion_pytorch_model.safetensors"))


def test_loss_falls_on_one_image_overfit(tiny_model, one_image):
    cfg = quick_config(one_image, num_train_epochs=30, learning_rate=1e-3, seed=0)
    result = Trainer(tiny_model, cfg).run()
    losses = [row["loss"] for row in read_metrics(tiny_model.logging)]
    assert result.steps == 30 and len(losses) == 30
    first_mean, last_mean = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last_mean < 0.7 * first_mean, (first_mean, last_mean)


def test_intervals_save_and_preview_each_epoch(tiny_model, demo_images, models_root):
    cfg = quick_config(demo_images, num_train_epochs=2, save_embedding_every=1, save_preview_every=1)
    result = Trainer(tiny_model, cfg).run()
    images = len(list(demo_images.glob("*.png")))
    assert result.steps == 2 * images
    assert [p.name for p in result.checkpoints] == [f"tiny_{images}.safetensors", f"tiny_{2 * images}.safetensors"]
    assert all(p.is_file() for p in result.checkpoints)
    assert len(result.samples) == 2 and all(p.is_file() and p.with_suffix(".txt").is_file() for p in result.samples)
    assert {p.name for p in result.charts} == {"loss.png", "lr.png", "memory.png"}
    assert [p.name for p in list_snapshots(tiny_model.snapshots)] == [f"snapshot-{2 * images}"]  # keep 1
    saved = json.loads(tiny_model.config_file.read_text())
    assert saved["revision"] == 2 * images and saved["epoch"] == 2
    rows = read_metrics(tiny_model.logging)
    assert [r["step"] for r in rows] == list(range(1, 2 * images + 1))
    assert all(r["memory_mb"] > 0 and r["lr"] == pytest.approx(1e-4) for r in rows)


class CancelAtStep(TrainControl):
    """A control whose user presses Cancel once the loop reports `step`."""

    def __init__(self, step):
        super().__init__()
        self.cancel_step = step

    def update(self, **changes):
        super().update(**changes)
        if changes.get("step", 0) >= self.cancel_step:
            self.request_cancel()


def test_cancel_then_resume_matches_an_uninterrupted_run(models_root, tiny_checkpoint, demo_images):
    from dreambooth.service.operations import create_model

    settings = dict(num_train_epochs=3, lr_scheduler="cosine", lr_warmup_steps=2, train_batch_size=2,
                    gradient_accumulation_steps=2, save_embedding_every=0, save_state_during=False)
    straight = create_model("straight", tiny_checkpoint, progress=lambda m: None)
    Trainer(straight, quick_config(demo_images, **settings)).run()

    resumed = create_model("resumed", tiny_checkpoint, progress=lambda m: None)
    first = Trainer(resumed, quick_config(demo_images, **settings), CancelAtStep(3)).run()
    assert first.state == "canceled" and first.steps == 3
    assert len(first.checkpoints) == 1 and first.snapshots  # the cancel save ran
    second = Trainer(resumed, quick_config(demo_images, **settings), resume=True).run()
    images = len(list(demo_images.glob("*.png")))
    assert second.state == "done" and second.steps == TrainPlan(images, 2, 2, 3, 0, 0).total_steps

    a, b = _unet_weights(straight), _unet_weights(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    rows_a, rows_b = read_metrics(straight.logging), read_metrics(resumed.logging)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    assert [r["lr"] for r in rows_b] == pytest.approx([r["lr"] for r in rows_a])
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], abs=1e-5)


def test_a_snapshot_in_the_older_checkpoints_folder_is_resumed_then_pruned(tiny_model, demo_images):
    settings = dict(num_train_epochs=1, save_embedding_every=0, snapshots_to_keep=1)
    first = Trainer(tiny_model, quick_config(demo_images, **settings)).run()
    (snapshot,) = first.snapshots
    assert snapshot.parent == tiny_model.snapshots and snapshot.name == f"snapshot-{first.steps}"
    # as an earlier version left it: checkpoints/checkpoint-<revision>/
    tiny_model.older_snapshots.mkdir()
    older = snapshot.rename(tiny_model.older_snapshots / f"checkpoint-{first.steps}")
    logs = []
    second = Trainer(tiny_model, quick_config(demo_images, **dict(settings, num_train_epochs=2)),
                     TrainControl(on_log=logs.append), resume=True).run()
    assert second.steps == 2 * first.steps
    assert any(f"resumed from {older.name}: step {first.steps}" in line for line in logs)
    assert list_snapshots(tiny_model.snapshots, tiny_model.older_snapshots) == second.snapshots  # keep 1
    assert not older.exists() and second.snapshots[0].parent == tiny_model.snapshots


def test_corrupt_image_is_skipped_with_a_warning(tiny_model, demo_images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for png in sorted(demo_images.glob("*.png"))[:2]:
        (folder / png.name).write_bytes(png.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    control = TrainControl()
    result = Trainer(tiny_model, quick_config(folder, num_train_epochs=1), control).run()
    assert result.steps == 2
    assert any("broken.png" in line and "skipping" in line for line in control.snapshot().log)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp, "has no images"),
])
def test_bad_instance_folder(tiny_model, tmp_path, make, message):
    with pytest.raises(DreamboothError, match=message):
        Trainer(tiny_model, quick_config(make(tmp_path))).run()
    assert not list_snapshots(tiny_model.snapshots)


def test_pause_between_epochs_is_logged_and_cancel_ends_it(tiny_model, demo_images):
    control = CancelAtStep(10**9)
    cfg = quick_config(demo_images, num_train_epochs=2, epoch_pause_frequency=1, epoch_pause_time=1)
    Trainer(tiny_model, cfg, control).run()
    assert any("pausing 1 s after epoch 1" in line for line in control.snapshot().log)


def test_sample_request_during_training(tiny_model, demo_images):
    class SampleAtStep(TrainControl):
        def update(self, **changes):
            super().update(**changes)
            if changes.get("step") == 2:
                self.request_samples()

    control = SampleAtStep()
    result = Trainer(tiny_model, quick_config(demo_images, num_train_epochs=1), control).run()
    # the requested preview at step 2, then the end-of-run preview
    assert [p.name for p in result.samples] == ["sample_2-0.png", f"sample_{result.steps}-0.png"]


def test_gradient_checkpointing_and_8bit_adam_train(tiny_model, demo_images):
    require_bitsandbytes_on_cpu()
    cfg = quick_config(demo_images, num_train_epochs=1, gradient_checkpointing=True, optimizer="8bit AdamW")
    before = _unet_weights(tiny_model)
    result = Trainer(tiny_model, cfg).run()
    after = _unet_weights(tiny_model)
    assert result.steps > 0 and any(not torch.equal(before[k], after[k]) for k in before)


def test_scale_lr_multiplies_by_the_images_per_step_and_resumes_at_it(tiny_model, demo_images):
    settings = dict(train_batch_size=2, gradient_accumulation_steps=2, scale_lr=True, lr_warmup_steps=0)
    logs = []
    cfg = quick_config(demo_images, num_train_epochs=1, **settings)
    Trainer(tiny_model, cfg, TrainControl(on_log=logs.append)).run()
    rows = read_metrics(tiny_model.logging)
    assert rows and all(row["lr"] == pytest.approx(4 * cfg.learning_rate) for row in rows)
    assert any(line.startswith("scale_lr: learning rates × 4 (batch 2 × accumulation 2 × 1 process(es))")
               for line in logs)
    logs.clear()
    Trainer(tiny_model, quick_config(demo_images, num_train_epochs=2, **settings), TrainControl(on_log=logs.append),
            resume=True).run()
    resumed = read_metrics(tiny_model.logging)
    assert len(resumed) > len(rows) and all(row["lr"] == pytest.approx(4 * cfg.learning_rate) for row in resumed)
    assert not any("other learning rates" in line for line in logs)  # the scaled rate is the configured one


def test_previews_and_saves_do_not_count_in_it_per_s_or_the_eta(tiny_model, one_image):
    now = [0.0]

    class Timed(Trainer):
        clock = staticmethod(lambda: now[0])

        def _optimizer_step(self, group):
            super()._optimizer_step(group)
            now[0] += 1.0  # every training step takes 1 s

        def _preview_now(self):
            now[0] += 50.0  # a slow preview
            super()._preview_now()

        def _save_now(self, *args):
            now[0] += 30.0
            super()._save_now(*args)

    seen = []
    control = TrainControl()
    real_update = control.update
    control.update = lambda **changes: (seen.append(dict(changes)) if "it_per_s" in changes else None,
                                        real_update(**changes))[1]
    cfg = quick_config(one_image, num_train_epochs=12, save_preview_every=3, save_embedding_every=4)
    Timed(tiny_model, cfg, control).run()
    assert seen, "no speed was reported"
    for changes in seen:
        assert changes["it_per_s"] == pytest.approx(1.0)
    etas = [changes["eta_s"] for changes in seen]  # the remaining steps × 1 s, previews not counted
    assert etas == sorted(etas, reverse=True) and etas[-1] == 0
    assert all(eta == pytest.approx(round(eta)) for eta in etas) and 9 in [round(eta) for eta in etas]


def test_cancel_right_after_an_epochs_save_writes_nothing_twice(tiny_model, one_image):
    """Found in the real WebUI: Cancel at an epoch's last step saved that step's checkpoint and snapshot
    a second time."""

    class CancelAtEpochEnd(TrainControl):
        def update(self, **changes):
            super().update(**changes)
            if changes.get("step") == 2:  # the last step of epoch 2 (one image, batch 1): its save follows
                self.request_cancel()

    control = CancelAtEpochEnd()
    cfg = quick_config(one_image, num_train_epochs=5, save_embedding_every=1)
    result = Trainer(tiny_model, cfg, control).run()
    log = control.snapshot().log
    assert result.state == "canceled" and result.steps == 2
    assert sum("saved checkpoint" in line and line.endswith("_2.safetensors") for line in log) == 1, log
    assert sum("saved resume snapshot snapshot-2" in line for line in log) == 1, log
