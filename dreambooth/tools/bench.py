"""`python -m dreambooth bench`: the project's trainer against a textbook training loop, in one run.

Both train the "small" preset (SD1-shaped, ~17.6M-parameter UNet) on the same demo images, at the same
resolution, batch size, learning rate and number of steps. Every measurement runs in its own fresh
subprocess so that peak memory (RSS; on CUDA also peak VRAM) never mixes between the two, and runs
alternate reference/trainer (ABBA order) with the median of the paired ratios reported, because timings on a
shared machine drift by ±10%. The last line printed is one JSON object; `--out` writes the same record.

`--scaling` adds the trainer at 8, 64 and 512 images (time per image, peak RSS) and sampling time per image.
`--breakdown` times each part of the reference's step and reports the caching ceiling (tools/bench_breakdown.py).
`--lora` adds a LoRA run of the trainer (use_lora, the registry's LoRA defaults) to each pair, next to the
trainer's full fine-tune run: samples/s, peak RSS (and VRAM) and the median paired ratios LoRA / full.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_NAME = "bench"
PROMPT = "a photo of sks toy"
SCALING_SIZES = (8, 64, 512)


# --------------------------------------------------------------------------------------------------
# measurement helpers (used inside the worker subprocesses)
# --------------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


class StepClock:
    """Wall time at the end of the warm-up step and of the last measured step; peak memory at the end."""

    def __init__(self, warmup: int, steps: int, device_type: str):
        self.warmup, self.steps, self.device_type = warmup, steps, device_type
        self.t_warm = self.t_end = None
        self.rss_mb = self.vram_mb = None
        if device_type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def __call__(self, step: int) -> None:
        if step == self.warmup:
            _sync(self.device_type)
            self.t_warm = time.perf_counter()
        if step == self.steps:
            _sync(self.device_type)
            self.t_end = time.perf_counter()
            self.rss_mb = _peak_rss_mb()
            if self.device_type == "cuda":
                import torch

                self.vram_mb = torch.cuda.max_memory_allocated() / 2**20

    def record(self, batch: int) -> dict:
        elapsed = self.t_end - self.t_warm
        measured = self.steps - self.warmup
        return {"samples_per_s": measured * batch / elapsed, "s_per_step": elapsed / measured,
                "peak_rss_mb": self.rss_mb, "peak_vram_mb": self.vram_mb}


def _device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------------
def _reference_inputs(spec: dict):
    """(components, tokenizer, image paths) the reference loop and its breakdown start from, seeded."""
    from ..convert.diffusers_io import load_components

    import torch

    torch.manual_seed(spec["seed"])
    unet, vae, text_encoder, tokenizer, scheduler_config = load_components(Path(spec["model"]) / "working")
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler_config": scheduler_config}
    return components, tokenizer, sorted(Path(spec["images"]).glob("*.png"))


def worker_reference(spec: dict) -> dict:
    from .bench_reference import run_reference

    components, tokenizer, images = _reference_inputs(spec)
    clock = StepClock(spec["warmup"], spec["steps"], _device_type())
    run_reference(components, tokenizer, images, PROMPT, steps=spec["steps"], batch=spec["batch"], lr=spec["lr"],
                  resolution=spec["resolution"], seed=spec["seed"], on_step=clock,
                  gradient_checkpointing=spec["gradient_checkpointing"], low_memory=spec.get("low_memory", False))
    return clock.record(spec["batch"])


def worker_breakdown(spec: dict) -> dict:
    from .bench_breakdown import measure_breakdown

    components, tokenizer, images = _reference_inputs(spec)
    return measure_breakdown(components, tokenizer, images, PROMPT, batch=spec["batch"], lr=spec["lr"],
                             resolution=spec["resolution"], gradient_checkpointing=spec["gradient_checkpointing"],
                             repeats=spec.get("breakdown_repeats", 3))


def _trainer_config(spec: dict):
    from ..config import TrainConfig, apply_assignments

    values = {  # the trainer's defaults, at the benchmark's batch, LR, resolution and steps; nothing saved
        "train_batch_size": spec["batch"], "learning_rate": spec["lr"], "resolution": spec["resolution"],
        "seed": spec["seed"], "gradient_checkpointing": spec["gradient_checkpointing"],
        "save_embedding_every": 0, "save_preview_every": 0,
        "save_ckpt_after": False, "save_ckpt_cancel": False, "save_state_after": False, "save_state_cancel": False,
        "concepts_list": [{"instance_data_dir": spec["images"], "instance_prompt": PROMPT,
                           "n_save_sample": spec.get("samples", 0), "sample_seed": 1,
                           "save_infer_steps": spec.get("sample_steps", 20)}],
    }
    cfg = TrainConfig(values)
    for key, value in spec.get("low_memory_settings", {}).items():
        cfg.set(key, value)
    apply_assignments(cfg, spec.get("set", []))
    return cfg


def low_memory_settings(images: int, bnb_available: bool) -> dict:
    """The Performance Wizard's lowest-memory settings (its smallest GPU, 6 GB), for the memory race."""
    from ..wizard import recommend

    changes, _ = recommend(6, images, "v1x", bnb_available=bnb_available)
    keep = ("mixed_precision", "optimizer", "gradient_checkpointing", "stop_text_encoder", "use_ema",
            "fused_backward_pass", "gradient_accumulation_steps")
    return {key: changes[key] for key in keep if key in changes}


def worker_trainer(spec: dict) -> dict:
    import math

    from ..store import ModelDir
    from ..train.control import TrainControl
    from ..train.loop import Trainer

    cfg = _trainer_config(spec)
    images = len(list(Path(spec["images"]).glob("*.png")))
    steps_per_epoch = math.ceil(math.ceil(images / cfg.train_batch_size) / cfg.gradient_accumulation_steps)
    cfg.num_train_epochs = max(1, math.ceil(spec["steps"] / steps_per_epoch))
    times: dict = {}
    clock_box: dict = {}

    class BenchControl(TrainControl):
        def update(self, **changes):
            super().update(**changes)
            now = time.perf_counter()
            state = changes.get("state")
            if state is not None:
                times.setdefault(state, []).append(now)
                if state == "training" and "clock" not in clock_box:
                    clock_box["clock"] = StepClock(spec["warmup"], spec["steps"], _device_type())
            step = changes.get("step")
            if step and "clock" in clock_box and "total_steps" not in changes:
                clock_box["clock"](step)
                if step == spec["steps"]:
                    if spec.get("samples"):
                        self.request_samples()  # sampling from the in-memory model, timed below
                    self.request_cancel()

    control = BenchControl()
    started = time.perf_counter()
    Trainer(ModelDir(MODEL_NAME, Path(spec["model"])), cfg, control).run()
    record = clock_box["clock"].record(cfg.train_batch_size)
    record["prepare_s"] = times["training"][0] - started
    if spec.get("samples"):  # the end-of-run preview: sampling from the in-memory model
        sampling = times.get("sampling", [])
        resumed = [t for t in times.get("training", []) if sampling and t > sampling[0]]
        if sampling and resumed:
            record["sample_s_per_image"] = (resumed[0] - sampling[0]) / spec["samples"]
    return record


def _worker_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    os.environ["DREAMBOOTH_MODELS_DIR"] = spec["models_root"]
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    workers = {"reference": worker_reference, "trainer": worker_trainer, "breakdown": worker_breakdown}
    record = workers[spec["kind"]](spec)
    print("BENCH_RESULT " + json.dumps(record), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------------
def prepare_workdir(root: Path, preset: str, images: int, resolution: int, log) -> dict:
    """A small-preset source checkpoint, a model created from it, and demo image folders."""
    from ..service.operations import create_model
    from ..model.tiny import write_demo_images, write_tiny_checkpoint

    os.environ["DREAMBOOTH_MODELS_DIR"] = str(root / "models")
    source = root / f"{preset}.safetensors"
    if not source.exists():
        write_tiny_checkpoint(source, preset=preset)
    model_path = root / "models" / "dreambooth" / MODEL_NAME
    if not model_path.exists():
        create_model(MODEL_NAME, source, progress=lambda message: None)
    folder = root / f"images_{images}"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != images:
        write_demo_images(folder, count=images, size=resolution, seed=0)
    log(f"work folder {root}: model {model_path}, {images} images in {folder}")
    return {"models_root": str(root / "models"), "model": str(model_path), "images": str(folder)}


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    if timeout is None:  # an SD1.5-sized step takes minutes on a busy CPU
        timeout = 4 * 3600 if spec.get("low_memory") else 1800
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "dreambooth.tools.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"benchmark worker '{spec['kind']}' failed (exit {proc.returncode}):\n{tail}")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec=".2f", none="-"):
    return none if value is None else format(value, spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreambooth bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed at the start (default 5)")
    parser.add_argument("--batch", type=int, default=1, help="batch size for both (default 1)")
    parser.add_argument("--images", type=int, default=8, help="demo images (default 8)")
    parser.add_argument("--resolution", type=int, default=128, help="training resolution (default 128)")
    parser.add_argument("--lr", type=float, default=2e-6, help="learning rate for both (default 2e-6)")
    parser.add_argument("--preset", choices=("tiny", "small", "sd15"), default="small",
                        help="small: SD1-shaped 17.6M UNet; sd15: SD1.5's real shapes (UNet 860M, VAE 83M, CLIP-L) "
                             "with random weights, for peak memory at the size users train (implies --low-memory)")
    parser.add_argument("--low-memory", action="store_true",
                        help="the memory race: the trainer with the Wizard's lowest-memory settings, the reference "
                             "with its gradient checkpointing, set-grads-to-none and 8-bit Adam (where bitsandbytes runs)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating reference/trainer pairs (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0 = torch's default)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="gradient checkpointing in both loops (default: off in both, as in the example script; "
                             "the trainer's own default is on, a VRAM saver that costs time)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a trainer parameter for the trainer runs (e.g. mixed_precision=bf16)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each part of the reference's step (data, VAE encode, text encode, UNet step) "
                             "and report the caching ceiling: the most caching the encodes can gain")
    parser.add_argument("--breakdown-repeats", type=int, default=3,
                        help="timed repeats of each part for --breakdown, after one warm-up (default 3)")
    parser.add_argument("--scaling", action="store_true", help="also time the trainer at 8, 64 and 512 images")
    parser.add_argument("--lora", action="store_true",
                        help="also compare the trainer's LoRA run (use_lora) with its full fine-tune, in pairs")
    parser.add_argument("--scaling-sizes", default=",".join(map(str, SCALING_SIZES)), help=argparse.SUPPRESS)
    parser.add_argument("--sample-steps", type=int, default=20, help="sampling steps for --scaling (default 20)")
    parser.add_argument("--workdir", type=Path, help="keep the generated model and images here (default: temp)")
    parser.add_argument("--out", type=Path, default=Path("bench_result.json"),
                        help="JSON record (default ./bench_result.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.warmup < 1 or args.steps <= args.warmup:
        print("error: --steps must be larger than --warmup, and --warmup at least 1", file=sys.stderr)
        return 2
    log = lambda message: print(message, flush=True)  # noqa: E731
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir.resolve(), log)
    with tempfile.TemporaryDirectory(prefix="dreambooth-bench-") as tmp:
        return _run(args, Path(tmp), log)


def _run(args, root: Path, log) -> int:
    import platform

    import torch

    from .bench_reference import adam8bit_class

    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else (platform.processor() or platform.machine())
    paths = prepare_workdir(root, args.preset, args.images, args.resolution, log)
    low_memory = args.low_memory or args.preset == "sd15"
    base = dict(paths, steps=args.steps, warmup=args.warmup, batch=args.batch, lr=args.lr,
                resolution=args.resolution, seed=args.seed, threads=args.threads,
                gradient_checkpointing=args.gradient_checkpointing or low_memory, low_memory=low_memory)
    if low_memory:
        adam8bit = adam8bit_class() is not None  # probed once: it runs an optimizer step
        base["low_memory_settings"] = low_memory_settings(args.images, adam8bit)
        log(f"low-memory race: trainer with the Wizard's settings {base['low_memory_settings']}; reference with "
            "gradient checkpointing, set-grads-to-none and "
            + ("8-bit AdamW" if adam8bit else "AdamW (bitsandbytes does not run here)"))
    load_before = os.getloadavg()
    log(f"{args.pairs} pairs of runs, {args.steps} steps each ({args.warmup} warm-up), batch {args.batch}, "
        f"{args.resolution} px, preset {args.preset}, gradient checkpointing "
        f"{'on' if base['gradient_checkpointing'] else 'off'} in both, device {device} ({device_name}), "
        f"{args.threads or torch.get_num_threads()} torch threads per run, load average {load_before[0]:.2f}")
    reference, trainer, lora, speedups, rss_ratios = [], [], [], [], []
    for pair in range(args.pairs):
        order = ("reference", "trainer") if pair % 2 == 0 else ("trainer", "reference")
        if args.lora:  # beside the trainer's run, alternating sides like the race itself
            order = order + ("lora",) if pair % 2 == 0 else ("lora",) + order
        results = {}
        for kind in order:
            spec = dict(base, kind="reference" if kind == "reference" else "trainer")
            if kind != "reference":
                spec["set"] = list(args.set) + (["use_lora=true"] if kind == "lora" else [])
            results[kind] = run_worker(spec)
            r = results[kind]
            vram = f", peak VRAM {r['peak_vram_mb']:.0f} MB" if r["peak_vram_mb"] else ""
            log(f"  pair {pair + 1} {kind:9s}: {r['samples_per_s']:6.2f} samples/s, "
                f"{r['s_per_step'] * 1000:6.1f} ms/step, peak RSS {r['peak_rss_mb']:.0f} MB{vram}")
        reference.append(results["reference"])
        trainer.append(results["trainer"])
        if args.lora:
            lora.append(results["lora"])
        speedups.append(results["trainer"]["samples_per_s"] / results["reference"]["samples_per_s"])
        rss_ratios.append(results["trainer"]["peak_rss_mb"] / results["reference"]["peak_rss_mb"])
    load_after = os.getloadavg()

    summary = {}
    for name, runs in (("reference", reference), ("trainer", trainer)):
        summary[name] = {key: _median([r[key] for r in runs]) for key in ("samples_per_s", "s_per_step",
                                                                         "peak_rss_mb", "peak_vram_mb")}
        summary[name]["samples_per_s_runs"] = [round(r["samples_per_s"], 3) for r in runs]
    speedup, rss_ratio = statistics.median(speedups), statistics.median(rss_ratios)
    vram_ratio = None
    if summary["trainer"]["peak_vram_mb"] and summary["reference"]["peak_vram_mb"]:
        vram_ratio = summary["trainer"]["peak_vram_mb"] / summary["reference"]["peak_vram_mb"]
    log("")
    log(f"{'':10s} {'samples/s':>10s} {'ms/step':>8s} {'peak RSS MB':>12s} {'peak VRAM MB':>13s}   (medians)")
    for name in ("reference", "trainer"):
        s = summary[name]
        log(f"{name:10s} {s['samples_per_s']:10.2f} {s['s_per_step'] * 1000:8.1f} {s['peak_rss_mb']:12.0f} "
            f"{_fmt(s['peak_vram_mb'], '.0f'):>13s}")
    log(f"speedup (trainer / reference samples/s, median of {len(speedups)} paired ratios): {speedup:.2f}x "
        f"[{', '.join(f'{s:.2f}' for s in speedups)}]")
    log(f"rss_ratio (trainer / reference peak RSS): {rss_ratio:.3f} [{', '.join(f'{r:.3f}' for r in rss_ratios)}]"
        + (f"; vram_ratio {vram_ratio:.3f}" if vram_ratio else ""))
    log(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores "
        "(other processes on a shared machine slow both sides; the paired ratio cancels most of it)")

    record = {"speedup": round(speedup, 3), "rss_ratio": round(rss_ratio, 3), "device": device,
              "device_name": device_name, "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
              "images": args.images, "resolution": args.resolution, "preset": args.preset, "lr": args.lr,
              "pairs": args.pairs, "trainer_settings": args.set,
              "gradient_checkpointing": base["gradient_checkpointing"], "low_memory": low_memory,
              "low_memory_settings": base.get("low_memory_settings"),
              "torch_threads": args.threads or torch.get_num_threads(),
              "reference": summary["reference"], "trainer": summary["trainer"],
              "speedups": [round(s, 3) for s in speedups], "rss_ratios": [round(r, 3) for r in rss_ratios],
              "vram_ratio": None if vram_ratio is None else round(vram_ratio, 3),
              "load_avg": [round(load_before[0], 2), round(load_after[0], 2)], "cpu_count": os.cpu_count(),
              "versions": _versions()}
    if args.breakdown:
        record["breakdown"] = _breakdown(args, base, log)
    if args.scaling:
        record["scaling"] = _scaling(args, root, base, log)
    if args.lora:
        record["lora"] = _lora_summary(trainer, lora, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    print(json.dumps(record), flush=True)
    return 0


def _breakdown(args, base: dict, log) -> dict:
    from .bench_breakdown import describe

    breakdown = run_worker(dict(base, kind="breakdown", breakdown_repeats=args.breakdown_repeats))
    log("")
    for line in describe(breakdown):
        log(line)
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in breakdown.items()}


def _scaling(args, root: Path, base: dict, log) -> dict:
    sizes = [int(s) for s in str(args.scaling_sizes).split(",") if s.strip()]
    rows = []
    log("")
    log(f"scaling (trainer, {args.steps} steps, batch {args.batch}, "
        f"+2 samples of {args.sample_steps} steps at the end):")
    for size in sizes:
        paths = prepare_workdir(root, args.preset, size, args.resolution, lambda message: None)
        spec = dict(base, **paths, kind="trainer", set=args.set, samples=2, sample_steps=args.sample_steps)
        r = run_worker(spec)
        row = {"images": size, "train_s_per_image": r["s_per_step"] / args.batch, "peak_rss_mb": r["peak_rss_mb"],
               "prepare_s": r["prepare_s"], "sample_s_per_image": r.get("sample_s_per_image"),
               "peak_vram_mb": r["peak_vram_mb"]}
        rows.append(row)
    first = rows[0]
    log(f"{'images':>7s} {'train ms/image':>15s} {'vs first':>9s} {'peak RSS MB':>12s} {'vs first':>9s} "
        f"{'prepare s':>10s} {'sample s/image':>15s}")
    for row in rows:
        row["time_vs_first"] = row["train_s_per_image"] / first["train_s_per_image"] - 1
        row["rss_vs_first"] = row["peak_rss_mb"] / first["peak_rss_mb"] - 1
        log(f"{row['images']:7d} {row['train_s_per_image'] * 1000:15.1f} {row['time_vs_first'] * 100:+8.1f}% "
            f"{row['peak_rss_mb']:12.0f} {row['rss_vs_first'] * 100:+8.1f}% {row['prepare_s']:10.2f} "
            f"{_fmt(row['sample_s_per_image'], '.3f'):>15s}")
    return {"rows": rows, "max_time_change": max(abs(r["time_vs_first"]) for r in rows),
            "max_rss_growth": max(r["rss_vs_first"] for r in rows)}


def _lora_summary(full: list[dict], lora: list[dict], log) -> dict:
    """The trainer's LoRA runs against its full fine-tune runs of the same pairs (same model, images, steps
    and batch): each side's medians and the median paired ratios LoRA / full."""
    speed = [l["samples_per_s"] / f["samples_per_s"] for f, l in zip(full, lora)]
    rss = [l["peak_rss_mb"] / f["peak_rss_mb"] for f, l in zip(full, lora)]
    vram = [l["peak_vram_mb"] / f["peak_vram_mb"] for f, l in zip(full, lora) if l["peak_vram_mb"] and f["peak_vram_mb"]]
    summary = {kind: {key: _median([r[key] for r in rows]) for key in ("samples_per_s", "s_per_step", "peak_rss_mb",
                                                                        "peak_vram_mb")}
               for kind, rows in (("full", full), ("lora", lora))}
    result = {**summary, "speed_ratio": round(statistics.median(speed), 3),
              "rss_ratio": round(statistics.median(rss), 3), "rss_ratios": [round(r, 3) for r in rss],
              "vram_ratio": round(statistics.median(vram), 3) if vram else None}
    log("")
    log(f"LoRA vs full fine-tune (the trainer, use_lora on and off, {len(lora)} pair(s)):")
    log(f"{'':5s} {'samples/s':>10s} {'peak RSS MB':>12s} {'peak VRAM MB':>13s}   (medians)")
    for kind in ("full", "lora"):
        s = summary[kind]
        log(f"{kind:5s} {s['samples_per_s']:10.2f} {s['peak_rss_mb']:12.0f} {_fmt(s['peak_vram_mb'], '.0f'):>13s}")
    log(f"LoRA / full: samples/s {result['speed_ratio']:.2f}x, peak RSS {result['rss_ratio']:.3f} "
        f"[{', '.join(f'{r:.3f}' for r in rss)}]" + (f", peak VRAM {result['vram_ratio']:.3f}" if vram else ""))
    return result


def _versions() -> dict:
    found = {}
    for name in ("torch", "diffusers", "transformers", "accelerate"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main())
