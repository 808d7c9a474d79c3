"""Fused backward pass: each weight stepped inside backward, its gradient freed at once, with the same result as
the ordinary step; the combinations it cannot train are refused before any work."""
import pytest
import torch

from conftest import quick_config
from dreambooth.config import TrainConfig
from dreambooth.errors import DreamboothError
from dreambooth.train.fused_backward import FusedBackward, check_fused_backward
from dreambooth.train.loop import Trainer


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.GELU(),
                               torch.nn.Linear(16, 4))


def test_no_two_gradients_are_held_at_once():
    """Counted at each gradient's arrival: without the fused pass every earlier gradient is still there."""
    def peak_live_gradients(fused: bool) -> int:
        net = _net()
        params = list(net.parameters())
        peak = [0]

        def count(_param):
            peak[0] = max(peak[0], sum(p.grad is not None for p in params))
        for param in params:  # registered first: runs before the fused step frees this gradient
            param.register_post_accumulate_grad_hook(count)
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        if fused:
            FusedBackward(optimizer, max_grad_norm=0)
        net(torch.randn(3, 8)).pow(2).mean().backward()
        return peak[0]

    assert peak_live_gradients(fused=False) == 6  # 3 weights + 3 biases
    assert peak_live_gradients(fused=True) == 1


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, lambda *a, **k: torch.optim.SGD(*a, momentum=0.9, **k)])
def test_a_fused_step_equals_the_ordinary_step(optimizer_class):
    ordinary, fused = _net(), _net()
    groups = lambda net: [{"params": list(net[0].parameters()), "lr": 1e-2},  # noqa: E731
                          {"params": list(net[2].parameters()) + list(net[4].parameters()), "lr": 3e-3}]
    plain_opt = optimizer_class(groups(ordinary), lr=1e-2, weight_decay=0.01)
    fused_opt = optimizer_class(groups(fused), lr=1e-2, weight_decay=0.01)
    hooks = FusedBackward(fused_opt, max_grad_norm=0)
    for step in range(3):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        ordinary(x).pow(2).mean().backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        fused(x).pow(2).mean().backward()
        assert all(p.grad is None for p in fused.parameters())
    for a, b in zip(ordinary.parameters(), fused.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert [len(g["params"]) for g in fused_opt.param_groups] == [2, 4]  # groups restored after each step
    assert len(fused_opt.state_dict()["state"]) == 6
    hooks.remove()
    fused(torch.randn(2, 8)).sum().backward()
    assert all(p.grad is not None for p in fused.parameters())  # removed: gradients are left alone again


def test_per_tensor_clipping():
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    before = [p.detach().clone() for p in net.parameters()]
    FusedBackward(optimizer, max_grad_norm=1e-3)
    (net(torch.randn(5, 8)) * 1000).sum().backward()
    for old, new in zip(before, net.parameters()):  # SGD at lr 1 moves each tensor by its clipped gradient
        assert (old - new).norm() <= 1e-3 + 1e-6


def test_the_trainer_matches_the_ordinary_step(models_root, tiny_checkpoint, demo_images):
    """Same seed, same data: a run with the fused pass ends at the same weights as one without (no clipping,
    which is the one place they differ), with gradient checkpointing on, through the real loop."""
    from dreambooth.convert.diffusers_io import load_components
    from dreambooth.service.operations import create_model

    runs = {}
    for fused in (False, True):
        model = create_model(f"tiny_{fused}", tiny_checkpoint, progress=lambda message: None)
        initial = dict(load_components(model.working)[0].named_parameters())
        cfg = quick_config(demo_images, num_train_epochs=2, fused_backward_pass=fused, max_grad_norm=0,
                           gradient_checkpointing=True, learning_rate=1e-3)
        trainer = Trainer(model, cfg)
        result = trainer.run()
        runs[fused] = (result, dict(trainer.models.unet.named_parameters()), trainer.control.snapshot().log)
    (plain, plain_weights, _), (fused, fused_weights, fused_log) = runs[False], runs[True]
    assert plain.steps == fused.steps > 2
    assert abs(plain.last_loss - fused.last_loss) < 1e-5
    for name, weight in plain_weights.items():
        assert torch.allclose(weight, fused_weights[name], atol=1e-5), name
    moved = sum(not torch.equal(initial[name], weight) for name, weight in fused_weights.items())
    assert moved > len(fused_weights) // 2  # it really trained
    assert any("fused backward pass" in line for line in fused_log)


@pytest.mark.parametrize("setting,field", [
    (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps"),
    (dict(mixed_precision="fp16"), "mixed_precision"),
    (dict(optimizer="Prodigy"), "optimizer"),
])
def test_what_it_cannot_train_is_refused(setting, field):
    cfg = TrainConfig(dict({"fused_backward_pass": True, "mixed_precision": "no"}, **setting))
    with pytest.raises(DreamboothError) as info:
        check_fused_backward(cfg, num_processes=1, mixed_precision=cfg.mixed_precision)
    assert info.value.field == field and "fused_backward_pass" in str(info.value)
    with pytest.raises(DreamboothError, match="processes"):
        check_fused_backward(TrainConfig({"fused_backward_pass": True}), num_processes=2, mixed_precision="no")


def test_the_trainer_refuses_before_preparing(tiny_model, one_image):
    cfg = quick_config(one_image, fused_backward_pass=True, gradient_accumulation_steps=2)
    trainer = Trainer(tiny_model, cfg)
    with pytest.raises(DreamboothError, match="gradient_accumulation_steps = 2"):
        trainer.run()
    assert not hasattr(trainer, "models")  # refused before the models were loaded


def test_the_text_encoders_own_clip_norm_is_refused_while_the_text_encoder_trains():
    """tenc_grad_clip_norm clips the text encoder's whole gradient after backward, which never exists with the
    fused pass (each tensor is stepped inside it): refused instead of silently training unclipped. Without a
    training text encoder, or at 0 (max_grad_norm then clips each text encoder tensor, as the UNet's), it trains."""
    base = {"fused_backward_pass": True, "mixed_precision": "no", "max_grad_norm": 1.0}
    cfg = TrainConfig(dict(base, tenc_grad_clip_norm=0.5, stop_text_encoder=0.5))
    with pytest.raises(DreamboothError) as info:
        check_fused_backward(cfg, num_processes=1, mixed_precision="no")
    assert info.value.field == "tenc_grad_clip_norm"
    assert "tenc_grad_clip_norm = 0.5" in str(info.value) and "Set tenc_grad_clip_norm to 0" in str(info.value)
    assert "fused_backward_pass" in str(info.value)
    check_fused_backward(TrainConfig(dict(base, tenc_grad_clip_norm=0.5, stop_text_encoder=0)), 1, "no")
    check_fused_backward(TrainConfig(dict(base, tenc_grad_clip_norm=0, stop_text_encoder=1.0)), 1, "no")


def test_the_trainer_refuses_the_text_encoders_clip_norm_before_preparing(tiny_model, one_image):
    """Through the real loop: today's fused pass would step the text encoder with tenc_grad_clip_norm ignored."""
    cfg = quick_config(one_image, fused_backward_pass=True, stop_text_encoder=1.0, tenc_grad_clip_norm=1e-9,
                       max_grad_norm=0, optimizer="Torch AdamW")
    trainer = Trainer(tiny_model, cfg)
    with pytest.raises(DreamboothError) as info:
        trainer.run()
    assert info.value.field == "tenc_grad_clip_norm"
    assert not hasattr(trainer, "models")  # refused before the models were loaded
