"""The older extension's training settings, each shown to change what it says: train_unet,
freeze_clip_normalization, tenc_weight_decay, tenc_grad_clip_norm, prior-loss annealing, split_loss,
input_pertubation, use_dream, deterministic, full_mixed_precision, freeze_spectral_norm, dynamic_img_norm,
disable_class_matching."""
import pytest
import torch
from data_helpers import build, pairs_for, write_image

from conftest import folder_weights, quick_config
from dreambooth.errors import DreamboothError
from dreambooth.monitor.metrics import read_metrics
from dreambooth.train.loop import Trainer


def _sigma(weight):
    return torch.linalg.matrix_norm(weight.detach().float().flatten(1), ord=2).item()


def test_train_unet_off_leaves_the_unet_bit_identical_and_frozen_norms_keep_their_weights(tiny_model, one_image):
    before = folder_weights(tiny_model.working)
    cfg = quick_config(one_image, train_unet=False, stop_text_encoder=1.0, freeze_clip_normalization=True,
                       tenc_weight_decay=0.3, txt_learning_rate=1e-3)
    trainer = Trainer(tiny_model, cfg)
    trainer.run()
    after = folder_weights(tiny_model.working)
    unet = [k for k in before if k.startswith("unet/")]
    assert unet and all(torch.equal(before[k], after[k]) for k in unet)
    norms = [k for k in before if k.startswith("text_encoder/") and "layer_norm" in k]
    others = [k for k in before if k.startswith("text_encoder/") and "layer_norm" not in k and "embeddings" not in k]
    assert norms and all(torch.equal(before[k], after[k]) for k in norms)
    assert any(not torch.equal(before[k], after[k]) for k in others)  # the rest of the text encoder trained
    assert trainer.optimizer.param_groups[0]["params"] == []
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.3
    assert not trainer.models.text_encoder.training  # eval mode: no dropout


def test_train_unet_off_with_nothing_else_training_is_refused(tiny_model, one_image):
    with pytest.raises(DreamboothError) as error:
        Trainer(tiny_model, quick_config(one_image, train_unet=False, stop_text_encoder=0.5)).run()
    assert error.value.field == "train_unet" and "stop_text_encoder to 1" in str(error.value)


def test_text_encoder_gradients_are_clipped_on_their_own():
    from dreambooth.train.param_groups import clip_gradients

    def params(scale):
        weights = [torch.nn.Parameter(torch.zeros(10)) for _ in range(2)]
        for w in weights:
            w.grad = torch.full((10,), scale)
        return weights

    def norm(weights):
        return torch.linalg.vector_norm(torch.cat([w.grad for w in weights])).item()

    unet, text = params(0.1), params(10.0)  # norms 0.45 and 44.7
    clip_gradients(torch.nn.utils.clip_grad_norm_, unet, text, max_grad_norm=1.0, text_encoder_norm=0.5)
    assert norm(text) == pytest.approx(0.5, rel=1e-4) and norm(unet) == pytest.approx(0.4472, rel=1e-3)
    unet, text = params(0.1), params(10.0)
    clip_gradients(torch.nn.utils.clip_grad_norm_, unet, text, max_grad_norm=1.0, text_encoder_norm=0.0)
    assert norm(unet + text) == pytest.approx(1.0, rel=1e-4) and norm(unet) < 0.02  # together: the UNet shrinks too


def test_prior_weight_anneals_per_step_as_planned(tiny_model, one_image, tmp_path):
    from dreambooth.config import TrainConfig
    from dreambooth.train.prior_schedule import prior_weight

    schedule = TrainConfig({"prior_loss_scale": True, "prior_loss_weight": 1.0, "prior_loss_weight_min": 0.2,
                            "prior_loss_target": 4})
    assert [prior_weight(schedule, e) for e in (0, 1, 2, 4, 9)] == pytest.approx([1.0, 0.8, 0.6, 0.2, 0.2])
    assert prior_weight(TrainConfig({"prior_loss_weight": 0.5}), 3) == 0.5  # off: the fixed weight

    for n in range(2):  # an existing class folder: nothing is generated
        write_image(tmp_path / "class" / f"c{n}.png", 64, 64, seed=10 + n)
    write_image(one_image / "second.png", 64, 64, seed=3)
    concept = {"instance_data_dir": str(one_image), "instance_prompt": "a photo of sks toy",
               "class_data_dir": str(tmp_path / "class"), "class_prompt": "a photo of a toy",
               "num_class_images_per": 1, "n_save_sample": 0}
    cfg = quick_config(one_image, num_train_epochs=3, prior_loss_scale=True, prior_loss_weight=1.0,
                       prior_loss_weight_min=0.25, prior_loss_target=2, concepts_list=[concept])
    Trainer(tiny_model, cfg).run()
    rows = read_metrics(tiny_model.logging)
    assert [r["prior_weight"] for r in rows] == pytest.approx([1.0, 0.8125, 0.625, 0.4375, 0.25, 0.25])
    assert all(r["prior_loss"] > 0 and r["instance_loss"] > 0 for r in rows)


def test_split_loss_off_averages_all_rows_together():
    from dreambooth.train.losses import dreambooth_loss

    prediction = torch.tensor([[1.0], [2.0], [3.0]])  # squared errors 1, 4, 9 against zeros
    target, prior = torch.zeros(3, 1), torch.tensor([False, True, True])
    split, instance, prior_part = dreambooth_loss(prediction, target, prior, 0.5)
    joined, _, _ = dreambooth_loss(prediction, target, prior, 0.5, split=False)
    assert (instance.item(), prior_part.item()) == (1.0, 6.5)
    assert split.item() == pytest.approx(1.0 + 0.5 * 6.5)
    assert joined.item() == pytest.approx((1.0 + 0.5 * 4 + 0.5 * 9) / 3)


def _step_inputs(tiny_parts, tmp_path, **options):
    from diffusers import DDPMScheduler

    from dreambooth.convert.diffusers_io import SCHEDULER_CONFIG
    from dreambooth.train.step import StepInputs

    write_image(tmp_path / "inst" / "a.png", 64, 64, caption="sks toy")
    _, pairs = pairs_for(tmp_path / "inst")
    unet, vae, text_encoder, tokenizer = tiny_parts
    values = dict(training_set=build(pairs, tiny_parts), unet=unet, text_encoder=text_encoder,
                  frozen_text_encoder=text_encoder, noise_scheduler=DDPMScheduler.from_config(SCHEDULER_CONFIG),
                  generator=None, clip_skip=1, offset_noise=0.0, min_snr_gamma=0.0, prior_loss_weight=1.0)
    values.update(options)
    return StepInputs(**values)


def _loss(inputs, seed=0):
    from dreambooth.train.step import micro_batch_loss

    inputs.generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return micro_batch_loss(inputs, [0], False)[0].item()


def test_input_perturbation_moves_the_input_but_not_the_target(tiny_parts, tmp_path):
    from dreambooth.train.loss_tricks import INPUT_PERTURBATION, perturbed_noise

    noise = torch.randn(2, 4, 8, 8)
    extra = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(perturbed_noise(noise, torch.Generator().manual_seed(5)), noise + INPUT_PERTURBATION * extra)
    plain = _step_inputs(tiny_parts, tmp_path)
    perturbed = _step_inputs(tiny_parts, tmp_path, input_perturbation=True)
    assert _loss(plain) == _loss(plain) and _loss(plain) != _loss(perturbed)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dream_shifts_input_and_target_by_the_models_own_error(tiny_parts, prediction):
    from diffusers import DDPMScheduler

    from dreambooth.convert.diffusers_io import SCHEDULER_CONFIG
    from dreambooth.train.loss_tricks import dream_adjust
    from dreambooth.train.losses import target_for

    unet = tiny_parts[0]
    scheduler = DDPMScheduler.from_config(dict(SCHEDULER_CONFIG, prediction_type=prediction))
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps, context = torch.tensor([100, 700]), torch.randn(2, 77, unet.config.cross_attention_dim)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = target_for(scheduler, latents, noise, timesteps)
    adjusted, moved = dream_adjust(unet, scheduler, noisy, target, noise, timesteps, context, 1.0)
    with torch.no_grad():
        predicted = unet(noisy, timesteps, context).sample
    alphas = scheduler.alphas_cumprod[timesteps][:, None, None, None]
    if prediction == "v_prediction":  # the model's noise estimate from its v estimate
        predicted = alphas.sqrt() * predicted + (1 - alphas).sqrt() * noisy
    delta = (noise - predicted) * (1 - alphas).sqrt()  # λ = sqrt(1 - ᾱ)^1
    assert torch.allclose(adjusted, noisy + (1 - alphas).sqrt() * delta, atol=1e-5)
    shift = alphas.sqrt() if prediction == "v_prediction" else 1.0
    assert torch.allclose(moved, target + shift * delta, atol=1e-5)
    # the v target still matches the moved input: v = sqrt(ᾱ)·ε' − sqrt(1 − ᾱ)·x0 with ε' = ε + δ
    if prediction == "v_prediction":
        assert torch.allclose(moved, scheduler.get_velocity(latents, noise + delta, timesteps), atol=1e-5)


def test_deterministic_runs_repeat_with_seed_minus_one(models_root, tiny_checkpoint, one_image):
    from dreambooth.service.operations import create_model
    from dreambooth.train.control import TrainControl

    class Watch(TrainControl):
        flags: list = []

        def update(self, **changes):
            if changes.get("step"):
                self.flags.append(torch.are_deterministic_algorithms_enabled())
            super().update(**changes)

    weights = []
    for name in ("one", "two"):
        model = create_model(name, tiny_checkpoint, progress=lambda m: None)
        trainer = Trainer(model, quick_config(one_image, seed=-1, deterministic=True, num_train_epochs=1), Watch())
        trainer.run()
        assert trainer.seed == 0
        weights.append(folder_weights(model.working))
    assert Watch.flags and all(Watch.flags) and not torch.are_deterministic_algorithms_enabled()  # restored
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_full_mixed_precision_holds_the_unet_in_bf16_and_saves_fp32(tiny_model, one_image):
    cfg = quick_config(one_image, num_train_epochs=1, mixed_precision="bf16", full_mixed_precision=True)
    trainer = Trainer(tiny_model, cfg)
    result = trainer.run()
    assert trainer.models.unet.dtype == torch.bfloat16 and result.last_loss == result.last_loss  # not NaN
    saved = folder_weights(tiny_model.working)
    assert {v.dtype for k, v in saved.items() if k.startswith("unet/")} == {torch.float32}
    messages = []
    from dreambooth.train.full_precision import hold_in_bf16

    assert not hold_in_bf16(trainer.models.unet, True, "fp16", messages.append) and "bf16" in messages[0]


def test_frozen_spectral_norm_stays_at_its_start_value():
    from dreambooth.train.spectral import SpectralNormFreeze

    torch.manual_seed(0)
    frozen, free = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Conv2d(8, 16, 3)), None
    free = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Conv2d(8, 16, 3))
    free.load_state_dict(frozen.state_dict())
    start = [_sigma(layer.weight) for layer in frozen]
    keeper = SpectralNormFreeze(frozen)
    for _ in range(50):  # updates that grow the weights, as a high learning rate does
        with torch.no_grad():
            for a, b in zip(frozen, free):
                step = 0.003 * torch.randn_like(a.weight)
                a.weight.add_(step).mul_(1.01)
                b.weight.add_(step).mul_(1.01)
        keeper.apply()
    assert [_sigma(layer.weight) for layer in frozen] == pytest.approx(start, rel=0.02)
    assert all(_sigma(b.weight) > 1.3 * s for b, s in zip(free, start))


def test_dynamic_image_norm_normalizes_each_image_by_itself(tmp_path, tiny_parts):
    from dreambooth.data.cache import encode, norm_fingerprint, per_image_normalized
    from dreambooth.data.images import load_pixels, probe

    image = write_image(tmp_path / "inst" / "a.png", 64, 64, caption="sks toy")
    _, pairs = pairs_for(tmp_path / "inst")
    fixed = build(pairs, tiny_parts)
    dynamic = build(pairs, tiny_parts, dynamic_norm=True)
    pixels = load_pixels(probe(image), fixed.buckets[0].size)[None]
    unit = pixels.float() / 255
    scaled = per_image_normalized(pixels)
    assert torch.allclose(scaled, (unit - unit.mean()) / unit.std(), atol=1e-5)
    expected, _ = encode(tiny_parts[1], pixels, "cpu", dynamic_norm=True)
    assert torch.allclose(dynamic.buckets[0].mean, expected, atol=1e-5)
    assert (dynamic.buckets[0].mean - fixed.buckets[0].mean).abs().max() > 1e-3
    assert norm_fingerprint("vae", True) != norm_fingerprint("vae", False)  # separate disk-cache entries


def test_disable_class_matching_uses_the_class_folder_as_it_is(tmp_path, tiny_model):
    from dreambooth.data.class_images import load_class_images, plan_class_images

    for n in range(3):
        write_image(tmp_path / "class" / f"c{n}.png", 64, 64, seed=20 + n)
    write_image(tmp_path / "inst" / "a.png", 64, 64, caption="sks toy")
    concepts, pairs = pairs_for(tmp_path / "inst", class_data_dir=str(tmp_path / "class"), num_class_images_per=5)
    items = [item for item, _ in pairs]
    for item in items:
        item.bucket = (64, 64)
    assert len(plan_class_images(concepts, items, tiny_model)) == 2  # 5 wanted, 3 there: 2 generated to match
    assert plan_class_images(concepts, items, tiny_model, matching=False) == []
    concepts, pairs = pairs_for(tmp_path / "inst", class_data_dir=str(tmp_path / "class"), num_class_images_per=1)
    matched, _ = load_class_images(concepts, items, tiny_model, lambda m: None)
    as_is, owned = load_class_images(concepts, items, tiny_model, lambda m: None, matching=False)
    assert len(matched) == 1 and len(as_is) == 3 and owned == [[0, 1, 2]]


def test_long_captions_and_the_loss_settings_train_end_to_end(tiny_model, one_image):
    """One run with the text settings and loss tricks together: the UNet takes the two-window conditioning,
    the text encoder trains then freezes (its cache at 154 positions), the preview encodes the long prompt."""
    caption = ", ".join(f"tag{n} word" for n in range(30))  # over 75 tokens
    (one_image / f"{sorted(one_image.glob('*.png'))[0].stem}.txt").write_text(caption)
    concept = {"instance_data_dir": str(one_image), "instance_prompt": "[filewords]", "n_save_sample": 1,
               "sample_seed": 3, "save_infer_steps": 2, "save_sample_prompt": caption}
    cfg = quick_config(one_image, num_train_epochs=2, max_token_length=150, pad_tokens=False, strict_tokens=True,
                       stop_text_encoder=0.5, use_dream=True, input_pertubation=True, split_loss=False,
                       freeze_spectral_norm=True, scheduler="DDIM", sanity_prompt="a red cube",
                       concepts_list=[concept])
    trainer = Trainer(tiny_model, cfg)
    start = {name: _sigma(p) for name, p in trainer_unet_weights(tiny_model)}
    result = trainer.run()
    assert result.state == "done" and result.steps == 2 and len(result.samples) == 2
    assert trainer.training_set.embeddings.shape[1] == 154  # cached after the text encoder froze
    assert all(r["loss"] == r["loss"] for r in read_metrics(tiny_model.logging))
    after = dict(trainer.models.unet.named_parameters())
    assert all(abs(_sigma(after[name]) - sigma) <= 0.02 * sigma for name, sigma in start.items())


def trainer_unet_weights(model):
    from dreambooth.convert.checkpoint_io import load_state_dict

    weights = load_state_dict(model.working / "unet" / "diffusion_pytorch_model.safetensors")[0]
    return [(name, w) for name, w in weights.items() if name.endswith(("conv_in.weight", "to_q.weight"))]
