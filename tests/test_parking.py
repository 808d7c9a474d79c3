"""Frozen modules parked on disk while a CPU run trains on outputs cached from them: out of RAM between
previews and saves, back for them, and nothing the run writes changes."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import quick_config
from dreambooth.service.operations import create_model
from dreambooth.train.control import TrainControl
from dreambooth.train.loop import Trainer
from dreambooth.train.parking import PARKING_FOLDER


def _weights(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _train(name, checkpoint, images, offload, precision):
    model = create_model(name, checkpoint, progress=lambda message: None)
    during = {}

    class Watch(TrainControl):
        def update(self, **changes):
            super().update(**changes)
            if changes.get("step") == 1:  # between steps: where the frozen weights are while training runs
                during["vae"], during["text_encoder"] = _weights(trainer.models.vae), _weights(trainer.models.text_encoder)
                during["files"] = sorted(p.name for p in (model.path / PARKING_FOLDER).rglob("*.safetensors"))

    cfg = quick_config(images, num_train_epochs=2, mixed_precision=precision, save_preview_every=1)
    trainer = Trainer(model, cfg, Watch(), offload=offload)
    trainer.run()
    return trainer, during, model


@pytest.mark.parametrize("precision", ["bf16", "no"])  # bf16: exported from working/; fp32: from the parked modules
def test_parked_on_disk_during_cpu_training_changes_nothing(tiny_checkpoint, models_root, one_image, precision):
    parked, during, model = _train(f"parked_{precision}", tiny_checkpoint, one_image, None, precision)
    kept, kept_during, _ = _train(f"kept_{precision}", tiny_checkpoint, one_image, False, precision)
    log = "\n".join(parked.control.snapshot().log)
    print(f"\n{precision}: parked during training {during}; kept in RAM: {kept_during}")
    assert "VAE and text encoder parked on disk after caching" in log
    assert during["vae"] == 0 and during["text_encoder"] == 0
    assert during["files"] == ["VAE.safetensors", "text_encoder.safetensors"]
    assert kept_during["vae"] > 0 and kept_during["text_encoder"] > 0 and kept_during["files"] == []
    # back after the run, the files gone, the weights those of the run that never parked them
    assert not (model.path / PARKING_FOLDER).exists()
    for name in ("vae", "text_encoder"):
        ours, theirs = getattr(parked.models, name).state_dict(), getattr(kept.models, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # previews (VAE and text encoder back for them) and the checkpoint are the same
    assert len(parked.result.samples) == len(kept.result.samples) == 2
    for ours, theirs in zip(parked.result.samples, kept.result.samples):
        assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs)))
    from safetensors.torch import load_file

    ours, theirs = load_file(str(parked.result.checkpoints[-1])), load_file(str(kept.result.checkpoints[-1]))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_parking_that_cannot_write_keeps_the_modules_in_ram(tiny_model, one_image):
    (tiny_model.path / PARKING_FOLDER).write_text("a file where the parking folder goes")  # cannot be written
    trainer = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="bf16"))
    result = trainer.run()
    log = "\n".join(trainer.control.snapshot().log)
    assert result.state == "done" and result.samples and result.checkpoints
    assert "warning: VAE stays in RAM: could not park it" in log and "parked on disk" not in log
    assert _weights(trainer.models.vae) > 0 and _weights(trainer.models.text_encoder) > 0
