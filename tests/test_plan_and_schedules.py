import pytest

from dreambooth.train.plan import TrainPlan
from dreambooth.train.schedulers import ScheduleSpec, lr_multiplier


def test_plan_small_case_saves_every_epoch():
    plan = TrainPlan(items=4, batch_size=1, accumulation=1, epochs=3, save_every=1, preview_every=1)
    assert plan.steps_per_epoch == 4 and plan.total_steps == 12
    assert plan.save_steps() == [4, 8, 12]


def test_plan_large_case_without_training():
    plan = TrainPlan(items=9, batch_size=1, accumulation=1, epochs=600, save_every=25, preview_every=0)
    saves = plan.save_steps()
    assert len(saves) == 24
    assert saves[:3] == [225, 450, 675] and saves[-1] == 5400
    assert plan.preview_steps() == [5400]  # 0 = only at the end


@pytest.mark.parametrize("items, batch, accumulation, steps_per_epoch", [
    (9, 1, 1, 9), (9, 2, 1, 5), (9, 2, 2, 3), (8, 4, 2, 1), (1, 4, 1, 1),
])
def test_steps_per_epoch(items, batch, accumulation, steps_per_epoch):
    assert TrainPlan(items, batch, accumulation, 1, 0, 0).steps_per_epoch == steps_per_epoch


def test_step_based_saves_replace_epoch_saves():
    plan = TrainPlan(items=4, batch_size=1, accumulation=1, epochs=3, save_every=1, preview_every=0,
                     save_every_steps=5, preview_every_steps=6)
    assert plan.save_steps() == [5, 10, 12]  # every 5 steps, and always the last one
    assert plan.preview_steps() == [6, 12]


def test_pause_never_after_last_epoch():
    plan = TrainPlan(items=1, batch_size=1, accumulation=1, epochs=4, save_every=0, preview_every=0, pause_every=2)
    assert [e for e in range(1, 5) if plan.pauses_after(e)] == [2]


# total 110 steps, 10 warm-up, so progress after warm-up = (step - 10) / 100
STEPS = [0, 5, 10, 35, 60, 110]
CURVES = {
    "constant": [1, 1, 1, 1, 1, 1],
    "constant_with_warmup": [0, 0.5, 1, 1, 1, 1],
    "linear": [0, 0.5, 1, 0.75, 0.5, 0.5],  # to factor 0.5 by scale_pos 0.5, then held
    "linear_with_warmup": [0, 0.5, 1, 0.75, 0.5, 0],
    "cosine": [0, 0.5, 1, 0.853553, 0.5, 0],
    "cosine_annealing": [0, 0.5, 1, 0.868198, 0.55, 0.1],  # floor 0.1
    "cosine_with_restarts": [0, 0.5, 1, 0.5, 1, 0],  # 2 cycles: restart at the half
    "cosine_annealing_with_restarts": [0, 0.5, 1, 0.55, 1, 0.1],
    "polynomial": [0, 0.5, 1, 0.60625, 0.325, 0.1],  # power 2, floor 0.1
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_lr_curves(name):
    spec = ScheduleSpec(name, total_steps=110, warmup_steps=10, cycles=2, power=2.0, min_ratio=0.1,
                        factor=0.5, scale_pos=0.5)
    assert [round(lr_multiplier(spec, s), 6) for s in STEPS] == pytest.approx(CURVES[name], abs=1e-6)


def test_lambda_lr_follows_the_curve():
    import torch

    from dreambooth.train.schedulers import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    spec = ScheduleSpec("linear_with_warmup", total_steps=110, warmup_steps=10)
    scheduler = build_lr_scheduler(optimizer, spec)
    seen = []
    for _ in range(111):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert [seen[s] for s in STEPS] == pytest.approx([2 * v for v in CURVES["linear_with_warmup"]])
