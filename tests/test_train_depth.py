"""Training depth on the real tiny model: EMA, text-encoder schedule, optimizers with resume, NaN stop,
and the loss pieces (prior weight, min-SNR, offset noise)."""
import hashlib

import pytest
import torch
from data_helpers import require_bitsandbytes_on_cpu
from safetensors.torch import load_file

from conftest import quick_config
from dreambooth.errors import DreamboothError
from dreambooth.registry import OPTIMIZERS
from dreambooth.train import losses
from dreambooth.train.loop import Trainer
from dreambooth.train.snapshot import list_snapshots


def _unet_file(model):
    return model.working / "unet" / "diffusion_pytorch_model.safetensors"


def test_ema_follows_its_decay(tiny_model, one_image):
    cfg = quick_config(one_image, num_train_epochs=2, use_ema=True, ema_decay=0.9, learning_rate=1e-3,
                       save_embedding_every=1, snapshots_to_keep=2)
    trainer = Trainer(tiny_model, cfg)
    result = trainer.run()
    assert result.steps == 2
    first, second = [load_file(str(p / "unet.safetensors")) for p in list_snapshots(tiny_model.snapshots)]
    names = [n for n, p in trainer.models.unet.named_parameters() if p.requires_grad]
    # diffusers' EMAModel: step 1 starts the average at the weights, step 2 uses min(0.9, 2/11)
    decay = 2 / 11
    for name, shadow in zip(names, trainer.ema.shadow):
        expected = decay * first[name] + (1 - decay) * second[name]
        assert torch.allclose(shadow.cpu(), expected, atol=1e-6), name
    assert any(p.name.endswith("_ema.safetensors") for p in (tiny_model.path.parents[1] / "Stable-diffusion").iterdir())
    snapshot = list_snapshots(tiny_model.snapshots)[-1]
    assert (snapshot / "ema_unet.safetensors").is_file()


def test_text_encoder_trains_only_for_its_fraction(tiny_model, one_image):
    from dreambooth.convert.diffusers_io import load_components

    initial = load_components(tiny_model.working)[2].state_dict()
    cfg = quick_config(one_image, num_train_epochs=2, stop_text_encoder=0.5, txt_learning_rate=1e-3,
                       save_embedding_every=1, snapshots_to_keep=2, gradient_set_to_none=False)
    control_log = Trainer(tiny_model, cfg)
    control_log.run()
    first, second = [load_file(str(p / "text_encoder.safetensors")) for p in list_snapshots(tiny_model.snapshots)]
    changed = [k for k in first if not torch.equal(first[k], initial[k].cpu())]
    assert changed, "the text encoder did not train in its epoch"
    assert all(torch.equal(first[k], second[k]) for k in first), "the text encoder moved after it was frozen"
    assert any("text encoder frozen after 1 epoch" in line for line in control_log.control.snapshot().log)
    reloaded = load_components(tiny_model.working)[2].state_dict()  # working/ holds the trained encoder
    assert torch.equal(reloaded[changed[0]], second[changed[0]])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_steps_and_resumes(optimizer, tiny_model, demo_images):
    if optimizer in ("8bit AdamW", "Lion", "8bit Lion"):
        require_bitsandbytes_on_cpu()
    pytest.importorskip({"Prodigy": "prodigyopt", "AdamW Dadaptation": "dadaptation"}.get(optimizer, "torch"))
    lr = 1.0 if optimizer in ("Prodigy", "AdamW Dadaptation") else 1e-4
    settings = dict(num_train_epochs=1, optimizer=optimizer, learning_rate=lr, train_batch_size=3)
    before = load_file(str(_unet_file(tiny_model)))
    first = Trainer(tiny_model, quick_config(demo_images, **settings)).run()
    after = load_file(str(_unet_file(tiny_model)))
    assert first.steps == 2 and any(not torch.equal(before[k], after[k]) for k in before)
    snapshot = list_snapshots(tiny_model.snapshots)[-1]
    saved = torch.load(snapshot / "optimizer.pt", weights_only=True)
    assert saved["state"], "optimizer state missing from the snapshot"

    resumed = Trainer(tiny_model, quick_config(demo_images, **dict(settings, num_train_epochs=2)), resume=True)
    resumed._prepare()
    restored = resumed.optimizer.state_dict()["state"]
    key = next(iter(saved["state"]))
    for name, value in saved["state"][key].items():
        if torch.is_tensor(value):
            assert torch.equal(restored[key][name].cpu(), value), name
    assert resumed.global_step == 2


def test_nan_loss_stops_without_touching_the_last_checkpoint(tiny_model, demo_images):
    good = Trainer(tiny_model, quick_config(demo_images, num_train_epochs=1)).run()
    checkpoint = good.checkpoints[-1]
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (checkpoint, _unet_file(tiny_model))}
    snapshots = list_snapshots(tiny_model.snapshots)

    class Diverging(Trainer):
        """Training that blows up at step 2 (as a too-high learning rate in fp16 would)."""

        def _after_step(self, epoch, progress):
            super()._after_step(epoch, progress)
            if self.global_step == 2:
                with torch.no_grad():
                    next(self.models.unet.parameters()).fill_(float("nan"))

    with pytest.raises(DreamboothError, match="NaN or infinite at step 3.*lower learning_rate"):
        Diverging(tiny_model, quick_config(demo_images, num_train_epochs=2, save_embedding_every=1)).run()
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digest} == digest
    assert list_snapshots(tiny_model.snapshots) == snapshots


def test_prior_term_is_weighted():
    prediction = torch.tensor([[1.0], [3.0], [0.0]]).view(3, 1, 1, 1)
    target = torch.zeros(3, 1, 1, 1)
    prior = torch.tensor([False, True, True])
    loss, instance, prior_part = losses.dreambooth_loss(prediction, target, prior, 0.5)
    assert instance.item() == pytest.approx(1.0) and prior_part.item() == pytest.approx(4.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 * 4.5)
    no_prior, _, zero = losses.dreambooth_loss(prediction, target, torch.zeros(3, dtype=torch.bool), 0.5)
    assert no_prior.item() == pytest.approx((1 + 9 + 0) / 3) and zero.item() == 0


def test_min_snr_weights_match_the_formula():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 500, 999])
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    weights = losses.min_snr_weights(scheduler, t, 5.0)
    assert torch.allclose(weights, torch.clamp(snr, max=5.0) / snr)
    assert weights[0] < 1 and weights[2] == pytest.approx(1.0)  # low-noise steps are down-weighted


def test_offset_noise_shifts_each_channel():
    latents = torch.zeros(64, 4, 8, 8)
    plain = losses.make_noise(latents, torch.Generator().manual_seed(0), 0.0)
    offset = losses.make_noise(latents, torch.Generator().manual_seed(0), 0.5)
    shift = (offset - plain)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # constant per image, channel
    assert shift[:, :, 0, 0].std().item() == pytest.approx(0.5, rel=0.25)


def test_resume_with_another_optimizer_is_a_clear_error(tiny_model, demo_images):
    Trainer(tiny_model, quick_config(demo_images, num_train_epochs=1)).run()
    changed = quick_config(demo_images, num_train_epochs=2, optimizer="Adafactor")
    with pytest.raises(DreamboothError, match="holds Torch AdamW state, but optimizer is Adafactor"):
        Trainer(tiny_model, changed, resume=True).run()


def test_text_embeddings_are_cached_once_the_text_encoder_freezes(tiny_model, one_image):
    from dreambooth.model.text import encode_text

    trainer = Trainer(tiny_model, quick_config(one_image, num_train_epochs=2, stop_text_encoder=0.5,
                                               txt_learning_rate=1e-3))
    trainer.run()
    cached = trainer.training_set.batch([0], torch.Generator().manual_seed(0)).embeddings
    assert cached is not None  # epoch 2 used the cache
    with torch.no_grad():
        fresh = encode_text(trainer.models.text_encoder, trainer.training_set.input_ids[:1], 1)
    assert torch.allclose(cached, fresh, atol=1e-6)  # ... made by the trained, frozen encoder
