"""Issue 11, training that holds at real size: the traps that only bite on real data, GPUs and long runs,
each driven on the CPU through the same decision points the GPU path takes."""
import contextlib
import json
import os
import weakref

import pytest
import torch

from conftest import quick_config
from dreambooth.errors import DreamboothError
from dreambooth.train.control import TrainControl
from dreambooth.train.loop import Trainer
from dreambooth.train.snapshot import list_snapshots


def _log(trainer):
    return "\n".join(trainer.control.snapshot().log)


# 1. a second run with another mixed_precision in the same process ----------------------------------------
def test_second_run_with_another_precision_in_the_same_process(tiny_model, one_image):
    first = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="no"))
    first.run()
    second = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="bf16"))
    result = second.run()  # accelerate refused this before its state was reset between runs
    assert result.state == "done" and second.accelerator.mixed_precision == "bf16"
    assert "bf16 on the CPU" in _log(second) and "slower than fp32" in _log(second)  # what happens, said
    third = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="no"))
    assert third.run().state == "done" and third.accelerator.mixed_precision == "no"


def test_accelerator_can_be_made_again_with_another_precision():
    """The accelerate-level half of the above, independent of the optimizer a stack can run."""
    from dreambooth.train.setup import make_accelerator

    said = []  # accelerate keeps the settings process-wide: read each one before the next is made
    made = [make_accelerator(quick_config("unused", mixed_precision=p), said.append).mixed_precision
            for p in ("no", "bf16", "no")]
    assert made == ["no", "bf16", "no"]


# 2. the NaN guard on the GPU path: the flag read every 10 steps, saves in between ---------------------
class NanAt(Trainer):
    """Blows up after `bad_step` (as a too-high learning rate in fp16 would): from the next step on the loss is NaN."""

    bad_step = 3

    def _after_step(self, epoch, progress):
        if self.global_step == self.bad_step:
            with torch.no_grad():
                next(self.models.unet.parameters()).fill_(float("nan"))
        super()._after_step(epoch, progress)


def test_nan_between_flag_reads_never_saves_nor_prunes_the_good_snapshot(tiny_model, demo_images, models_root):
    # saves every 2 steps, the flag read every 10 steps (what a GPU does), NaN weights from step 3 on
    cfg = quick_config(demo_images, num_train_epochs=2, save_every_steps=2, snapshots_to_keep=1)
    trainer = NanAt(tiny_model, cfg, check_every=10)
    with pytest.raises(DreamboothError, match="NaN or infinite"):
        trainer.run()
    assert [p.name for p in list_snapshots(tiny_model.snapshots)] == ["snapshot-2"]  # the good one stays
    from safetensors.torch import load_file

    weights = load_file(str(list_snapshots(tiny_model.snapshots)[0] / "unet.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    working = load_file(str(tiny_model.working / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in working.values())
    written = sorted(p.name for p in (models_root / "Stable-diffusion").glob("tiny_*.safetensors"))
    assert written == ["tiny_2.safetensors"]  # no checkpoint from step 4 on


def test_snapshot_with_nan_weights_is_refused_and_the_older_one_kept(tmp_path):
    from dreambooth.train.snapshot import save_snapshot

    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = (optimizer, scheduler, torch.Generator(), {"global_step": 1})
    save_snapshot(tmp_path, 1, {"unet": layer}, *args, keep=1)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(DreamboothError, match="NaN/Inf.*older snapshots are kept"):
        save_snapshot(tmp_path, 2, {"unet": layer}, *args, keep=1)
    assert [p.name for p in list_snapshots(tmp_path)] == ["snapshot-1"]


# 3. EMA: diffusers' warm-up, an update interval, previews without a second UNet ------------------------
def test_ema_warmup_matches_diffusers_and_forgets_the_start():
    from dreambooth.train.ema import EMA, warmup_decay

    try:  # diffusers 0.31's training_utils does not import beside transformers 4.30 (the webui stack)
        from diffusers.training_utils import EMAModel
    except (ImportError, AttributeError):
        EMAModel = None
    start, trained = torch.zeros(3), torch.ones(3)
    param = torch.nn.Parameter(start.clone())
    ours = EMA(torch.nn.ParameterList([param]), 0.9999)
    theirs = EMAModel([torch.nn.Parameter(start.clone())], decay=0.9999) if EMAModel else None
    with torch.no_grad():
        param.copy_(trained)
    for step in range(1, 2001):
        ours.step()
        if theirs is not None:
            theirs.step([torch.nn.Parameter(trained.clone())])
            assert warmup_decay(step, 0.9999) == pytest.approx(theirs.get_decay(step))
    assert [warmup_decay(n, 0.9999) for n in (1, 2, 11)] == [0.0, pytest.approx(2 / 11), pytest.approx(11 / 20)]
    if theirs is not None:
        assert torch.allclose(ours.shadow[0], theirs.shadow_params[0], atol=1e-6)
    # the starting weights' share after 2,000 steps: 82% without warm-up (the old EMA), none with it
    assert 0.9999 ** 2000 == pytest.approx(0.8187, abs=1e-4)
    assert (1 - ours.shadow[0]).abs().max().item() < 1e-6


def test_ema_interval_keeps_the_time_constant():
    from dreambooth.train.ema import EMA

    values = [torch.full((4,), float(v)) for v in torch.linspace(0, 3, 400).tolist()]
    every_step, every_ten = (torch.nn.Parameter(torch.zeros(4)) for _ in range(2))
    a, b = EMA(torch.nn.ParameterList([every_step]), 0.99), EMA(torch.nn.ParameterList([every_ten]), 0.99, update_every=10)
    updates = 0
    for value in values:
        with torch.no_grad():
            every_step.copy_(value)
            every_ten.copy_(value)
        a.step()
        updates += b.step()
    assert updates == 40 + 1  # the first step, then every 10th: 41 host copies instead of 400
    assert b.shadow[0][0].item() == pytest.approx(a.shadow[0][0].item(), rel=0.03)


def test_ema_weights_are_swapped_in_without_a_copy_and_restored():
    from dreambooth.train.ema import EMA

    layer = torch.nn.Linear(8, 8)
    ema = EMA(layer, 0.9)
    with torch.no_grad():
        layer.weight.add_(1.0)
    trained = layer.weight.detach().clone()
    shadow_storage = ema.shadow[0].data_ptr()
    with ema.applied():
        assert layer.weight.data_ptr() == shadow_storage  # the EMA tensor itself: no clone of the UNet
        assert torch.allclose(layer.weight, trained - 1.0, atol=1e-6)
    assert torch.equal(layer.weight, trained) and ema.shadow[0].data_ptr() == shadow_storage
    # EMA kept elsewhere (another dtype stands in for another device): trained weights parked in RAM
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    ema_half = EMA(half, 0.9)
    before = half.weight.detach().clone()
    with ema_half.applied():
        assert half.weight.dtype == torch.bfloat16
    assert torch.equal(half.weight, before)


def test_ema_in_training_resumes_its_step_count(tiny_model, one_image):
    settings = dict(use_ema=True, ema_update_every=2, save_ckpt_after=False)
    trainer = Trainer(tiny_model, quick_config(one_image, num_train_epochs=5, **settings))
    trainer.run()
    assert trainer.ema.optimization_step == trainer.global_step == 5
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    trained = [p for p in unet.parameters() if p.requires_grad]
    assert any(not torch.equal(s, p) for s, p in zip(trainer.ema.shadow, trained))  # an average, not a copy
    resumed = Trainer(tiny_model, quick_config(one_image, num_train_epochs=6, **settings), resume=True)
    resumed._prepare()
    assert resumed.ema.optimization_step == 5 and resumed.ema.update_every == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.shadow, trainer.ema.shadow))


# 5. frozen modules: compute dtype, parked in RAM after caching, back for previews ----------------------
def test_frozen_modules_cast_and_offloaded_after_caching(tiny_model, one_image):
    moves = []

    class Watched(Trainer):
        def _prepare(self):
            super()._prepare()
            vae_to = self.models.vae.to

            def to(*args, **kwargs):
                moves.append(str(args[0]) if args else str(kwargs))
                return vae_to(*args, **kwargs)

            self.models.vae.to = to

    cfg = quick_config(one_image, num_train_epochs=1, mixed_precision="bf16")
    trainer = Watched(tiny_model, cfg, offload=True)
    trainer.run()
    assert trainer.models.vae.dtype == torch.bfloat16 and trainer.models.text_encoder.dtype == torch.bfloat16
    assert "VAE and text encoder moved to RAM after caching" in _log(trainer)
    assert moves == ["cpu", "cpu"]  # the end-of-run preview: onto the training device, then back to RAM
    assert trainer.result.samples and trainer.result.samples[0].is_file()
    from safetensors.torch import load_file

    exported = load_file(str(trainer.result.checkpoints[-1]))  # frozen parts written from their fp32 originals
    assert {v.dtype for k, v in exported.items() if k.startswith(("first_stage_model.", "cond_stage_model."))
            and v.is_floating_point()} == {torch.float32}

    # a text encoder that trains keeps fp32 (its optimizer needs it) and stays on the device
    training_te = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="bf16",
                                                   stop_text_encoder=1.0), offload=True)
    training_te._prepare()
    assert training_te.models.text_encoder.dtype == torch.float32
    assert "VAE moved to RAM" in _log(training_te)


# 4. images: header-only sizes, one image decoded at a time --------------------------------------------
_MEMORY_PROBE = r"""
import json, resource, shutil, sys
from pathlib import Path
import numpy as np
from PIL import Image
folder, mode = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, sys.argv[3])
import torch
from dreambooth.config import concepts_from_list
from dreambooth.data.dataset import collect_items
from dreambooth.data.images import open_rgb
from dreambooth.data.build import build_training_set
from dreambooth.model.tiny import build_components
from dreambooth.convert.tokenizer import write_clip_tokenizer
from transformers import CLIPTokenizer
parts = build_components("tiny")
tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder.parent / "tok")))
concepts = concepts_from_list([{"instance_data_dir": str(folder), "instance_prompt": "a photo of sks toy"}])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = peak()
if mode == "old":  # what the trainer did before: every image decoded at full size and kept
    kept = [open_rgb(p) for p in sorted(folder.glob("*.jpg"))]
else:
    pairs = collect_items(concepts, lambda m: None)
    ts = build_training_set(pairs, 64, parts["vae"], parts["text_encoder"], tokenizer, torch.device("cpu"), step=32)
    assert len(ts) == len(list(folder.glob("*.jpg")))
print(json.dumps({"growth_mb": peak() - base, "peak_mb": peak()}))
"""
# 40 photos in the suite; `DREAMBOOTH_PHOTOS=200 pytest tests/test_hold.py -k large_photos -s` is the check
PHOTOS = int(os.environ.get("DREAMBOOTH_PHOTOS", "40"))


def test_many_large_photos_keep_memory_flat(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(pixels).resize((3000, 4000), Image.NEAREST).save(photo, quality=80)
    folders = {}
    for count in (8, PHOTOS):  # phone-sized photos (decoding cost is per file, not per distinct content)
        folders[count] = tmp_path / f"photos_{count}"
        folders[count].mkdir()
        for i in range(count):
            (folders[count] / f"photo_{i:03d}.jpg").write_bytes(photo.read_bytes())
    script = tmp_path / "probe.py"
    script.write_text(_MEMORY_PROBE)
    repo = str(Path(__file__).resolve().parents[1])

    def probe(count: int, mode: str) -> dict:
        out = subprocess.run([sys.executable, str(script), str(folders[count]), mode, repo], capture_output=True,
                             text=True, timeout=1800)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    old, few, many = probe(PHOTOS, "old"), probe(8, "new"), probe(PHOTOS, "new")
    print(f"{PHOTOS} JPEGs of 3000x4000: peak RSS {many['peak_mb']:.0f} MB against {few['peak_mb']:.0f} MB for 8 "
          f"({many['peak_mb'] / few['peak_mb'] - 1:+.1%}); growth {many['growth_mb']:.0f} MB, kept at full size "
          f"{old['growth_mb']:.0f} MB")
    assert old["growth_mb"] > 25 * PHOTOS  # 36 MB of pixels per photo when kept: the probe can tell
    assert many["peak_mb"] <= 1.10 * few["peak_mb"], (few, many)


# 8. 16-bit PNGs, GIFs, unsupported files -----------------------------------------------------------
def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    import numpy as np
    from PIL import Image

    from dreambooth.data.images import ImageInfo, load_pixels, probe_all

    gray = np.full((64, 64), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    gray[:, :32] = 8192
    path = tmp_path / "scan16.png"
    Image.fromarray(gray).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # a real 16-bit PNG
    warnings = []
    [info] = probe_all([path], warnings.append)
    pixels = load_pixels(info, (64, 64))
    assert pixels[:, :, 40:].float().mean().item() == pytest.approx(127.5, abs=1.0)  # 32768 / 257
    assert pixels[:, :, :24].float().mean().item() == pytest.approx(31.9, abs=1.0)
    assert (pixels == 255).float().mean().item() < 0.01
    assert any("16-bit" in w and "scan16.png" in w for w in warnings)
    assert isinstance(info, ImageInfo)


def test_gif_first_frame_is_used_and_other_files_are_named(tmp_path):
    from PIL import Image

    from dreambooth.data.images import find_images, load_pixels, probe_all

    frames = [Image.new("RGB", (64, 64), color) for color in ((200, 10, 10), (10, 200, 10))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "photo.heic").write_bytes(b"not supported here")
    (tmp_path / "anim.txt").write_text("a caption")  # a sidecar: not reported
    warnings = []
    paths = find_images(tmp_path, warn=warnings.append)
    assert [p.name for p in paths] == ["anim.gif"]
    assert any("photo.heic" in w and "not a supported image type" in w for w in warnings)
    assert not any("anim.txt" in w for w in warnings)
    [info] = probe_all(paths, warnings.append)
    assert any("anim.gif is animated (2 frames)" in w for w in warnings)
    red = load_pixels(info, (64, 64)).float().mean(dim=(1, 2))
    assert red[0] > 150 and red[1] < 60  # the first (red) frame


# 7. metrics.jsonl: fresh per run, kept on resume, a torn line skipped --------------------------------
def test_metrics_reset_per_run_kept_on_resume_and_torn_line_skipped(tiny_model, one_image):
    from dreambooth.monitor.metrics import read_metrics

    settings = dict(num_train_epochs=3, save_ckpt_after=False)
    Trainer(tiny_model, quick_config(one_image, **settings)).run()
    metrics = tiny_model.logging / "metrics.jsonl"
    with open(metrics, "a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "loss": 0.')  # a run killed mid-write
    warned = []
    assert [r["step"] for r in read_metrics(tiny_model.logging, warned.append)] == [1, 2, 3]
    assert "skipped 1 unreadable line" in warned[0]
    resumed = Trainer(tiny_model, quick_config(one_image, **dict(settings, num_train_epochs=5)), resume=True)
    resumed.run()  # its preview draws the charts from the file: the torn line must not fail the job
    assert [r["step"] for r in read_metrics(tiny_model.logging)] == [1, 2, 3, 4, 5]
    assert "skipped 1 unreadable line" in _log(resumed)
    Trainer(tiny_model, quick_config(one_image, **settings)).run()  # a fresh run starts its own chart
    assert [r["step"] for r in read_metrics(tiny_model.logging)] == [1, 2, 3]


# 9. errors that were hidden or misdiagnosed ---------------------------------------------------------
@pytest.mark.parametrize("assignment, fragment", [
    ('concepts_list=[{"instance_data_dir": "/x", "instance_promt": "sks"}]',
     "unknown key 'instance_promt' (did you mean 'instance_prompt'?); allowed keys: instance_data_dir"),
    ('concepts_list=[{"instance_data_dir": 5}]', "concepts_list[0].instance_data_dir = 5 is not a valid str"),
    ("resolution=100", "resolution = 100 is out of range: allowed >= 8 and <= 4096 and a multiple of 8"),
])
def test_bad_values_fail_when_set_not_at_train(assignment, fragment):
    from dreambooth.config import TrainConfig, apply_assignments

    with pytest.raises(DreamboothError) as caught:
        apply_assignments(TrainConfig(), [assignment])
    assert fragment in str(caught.value)


def test_invalid_concepts_file_fails_when_set(tmp_path):
    from dreambooth.config import TrainConfig, apply_assignments, config_from_dict

    bad = tmp_path / "concepts.json"
    bad.write_text('[{"instance_data_dir": "imgs", "clas_prompt": "dog"}]')
    with pytest.raises(DreamboothError, match="unknown key 'clas_prompt'"):
        apply_assignments(TrainConfig(), [f"concepts_path={bad}", "use_concepts=true"])
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DreamboothError, match="not valid JSON"):
        apply_assignments(TrainConfig(), ["use_concepts=true", f"concepts_path={broken}"])
    cfg, _ = config_from_dict({"use_concepts": True, "concepts_path": str(broken)})  # a saved file still loads
    assert cfg.concepts_path == str(broken)


def test_help_of_resolution_says_multiple_of_8():
    from dreambooth.registry import FIELD_BY_NAME

    field = FIELD_BY_NAME["resolution"]
    assert "multiple of 8" in field.help and "multiple of 8" in field.describe_range()


def test_pickle_named_safetensors_and_out_of_memory_are_named(tmp_path, monkeypatch):
    from dreambooth.convert import checkpoint_io

    fake = tmp_path / "model.safetensors"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, fake)
    with pytest.raises(DreamboothError, match="is a pickle checkpoint .* named .safetensors.*rename it to 'model.ckpt'"):
        checkpoint_io.load_state_dict(fake)

    real = tmp_path / "real.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, real)

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 3400000000 bytes.")

    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(DreamboothError, match="not enough memory to load 'real.ckpt'.*the file itself may be fine"):
        checkpoint_io.load_state_dict(real)


def test_ema_keys_in_a_source_checkpoint_are_mentioned(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from dreambooth.convert.create import components_from_single_file

    tensors = load_file(str(tiny_checkpoint))
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    key = next(k for k in tensors if k.startswith("model.diffusion_model."))
    tensors["model_ema." + key[len("model."):].replace(".", "")] = tensors[key].clone()
    with_ema = tmp_path / "with_ema.safetensors"
    save_file(tensors, str(with_ema))
    said = []
    components_from_single_file(with_ema, progress=said.append)
    assert any("also holds EMA weights (1 model_ema.* tensors)" in line for line in said)


def test_resume_with_a_new_learning_rate_uses_it_and_says_so(tiny_model, one_image):
    Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, learning_rate=1e-4, save_ckpt_after=False)).run()
    resumed = Trainer(tiny_model, quick_config(one_image, num_train_epochs=2, learning_rate=3e-4), resume=True)
    resumed._prepare()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert "learning_rate 0.0001 -> 0.0003" in _log(resumed)


# 10. under data parallelism the cancel vote is not a per-step sync ----------------------------------
def test_cancel_vote_every_check_interval_with_several_processes(tiny_model, one_image):
    trainer = Trainer(tiny_model, quick_config(one_image), check_every=10)
    votes = []

    class TwoProcesses:
        num_processes = 2

        def reduce(self, tensor, reduction):
            votes.append(trainer.global_step)
            return tensor

    trainer.accelerator, trainer.device, trainer.check_every = TwoProcesses(), torch.device("cpu"), 10
    trainer.control.request_cancel()
    seen = []
    for step in range(25):
        trainer.global_step = step
        seen.append(trainer._cancel_requested())
    assert votes == [0, 10, 20] and seen.count(True) == 3


# 6. Generate Samples outside training: the host's lock, its model unloaded, the pipeline freed ----------
def test_samples_outside_training_take_the_lock_unload_and_free(tiny_model, demo_images, monkeypatch):
    from dreambooth.model import sampling
    from dreambooth.platform import host
    from dreambooth.service import operations

    events = []

    def hook(name):
        @contextlib.contextmanager
        def manager(*args, **kwargs):
            events.append(f"{name}+")
            yield
            events.append(f"{name}-")
        return manager

    monkeypatch.setattr(host, "generation_lock", hook("lock"))
    monkeypatch.setattr(host, "vram_released", hook("unload"))
    real_render, pipelines = sampling.render_samples, []

    def render(pipeline, *args, **kwargs):
        events.append("render")
        pipelines.append(weakref.ref(pipeline.unet))
        return real_render(pipeline, *args, **kwargs)

    monkeypatch.setattr(sampling, "render_samples", render)
    cfg = quick_config(demo_images)
    written = operations.generate_samples("tiny", cfg)
    assert written and written[0].is_file()
    assert events == ["lock+", "unload+", "render", "unload-", "lock-"]
    assert pipelines[0]() is None  # the pipeline's UNet is gone once the host's model returns


# 5b. the backward pass runs outside autocast, whose cache holds a low-precision copy of every cast weight ------
def test_backward_runs_outside_autocast(tiny_model, one_image):
    seen = []

    def autocast_on() -> bool:
        check = getattr(torch, "is_autocast_cpu_enabled", None)  # torch 2.1-2.3; later: is_autocast_enabled("cpu")
        return check() if check is not None else torch.is_autocast_enabled("cpu")

    trainer = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="bf16"))
    original = trainer._prepare

    def prepare_then_watch():
        original()
        weight = next(p for p in trainer.models.unet.parameters() if p.requires_grad)
        weight.register_post_accumulate_grad_hook(lambda _: seen.append(autocast_on()))
    trainer._prepare = prepare_then_watch
    trainer.run()
    assert seen and not any(seen), seen


def test_forward_autocast_keeps_no_weight_cache(tiny_model, one_image):
    pytest.importorskip("accelerate.utils", reason="accelerate").__dict__.get("AutocastKwargs") or pytest.skip(
        "accelerate before 0.22 has no AutocastKwargs")
    seen = []
    trainer = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1, mixed_precision="bf16",
                                               gradient_checkpointing=True))
    original = trainer._prepare

    def prepare_then_watch():
        original()
        trainer.models.unet.conv_in.register_forward_pre_hook(
            lambda module, args: seen.append((torch.is_autocast_cache_enabled(), _autocast_on())))
    trainer._prepare = prepare_then_watch
    trainer.run()
    assert seen and all(on for _, on in seen)  # the forward ran under autocast,
    assert not any(cached for cached, _ in seen), seen  # without the weight cache


def _autocast_on() -> bool:
    check = getattr(torch, "is_autocast_cpu_enabled", None)
    return check() if check is not None else torch.is_autocast_enabled("cpu")
