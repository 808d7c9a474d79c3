"""Command line: `python -m dreambooth <command>`; with no command it serves the tab standalone.

Bad input, a busy model (locked by another run) and a full disk exit 2 with a one-line message; success
exits 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .errors import DreamboothError

DEMO_MODEL = "demo"


def build_parser() -> argparse.ArgumentParser:
    models_dir = argparse.ArgumentParser(add_help=False)  # accepted before or after the command
    models_dir.add_argument("--models-dir", default=argparse.SUPPRESS,
                            help="models root holding dreambooth/ and Stable-diffusion/ "
                                 "(default: $DREAMBOOTH_MODELS_DIR, the WebUI's models folder, or ./models)")
    parser = argparse.ArgumentParser(prog="python -m dreambooth", description="Dreambooth training for Stable Diffusion.",
                                     parents=[models_dir])
    commands = parser.add_subparsers(dest="command", metavar="command")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[models_dir], **kwargs)

    serve = command("serve", help="serve the Dreambooth tab standalone (the default)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--listen", action="store_true", help="listen on all interfaces, not only 127.0.0.1 "
                       "(set --api-auth too: without it anyone on the network can use the tab and its API)")
    serve.add_argument("--api-auth", default=os.environ.get("DREAMBOOTH_API_AUTH") or None, metavar="USER:PASS[,...]",
                       help="require this login for the page, Gradio's API and file routes and the REST API "
                            "(default: $DREAMBOOTH_API_AUTH)")
    serve.add_argument("--data-root", action="append", default=[], metavar="DIR",
                       help="a folder the tab and the API may read images, concepts files and templates from and "
                            "write class images to, besides the models folder; repeatable "
                            "(also $DREAMBOOTH_DATA_ROOTS, separated by '%s')" % os.pathsep.replace("%", "%%"))

    create = command("create", help="create a model from a checkpoint or diffusers folder")
    create.add_argument("name")
    create.add_argument("--source", required=True, help=".safetensors/.ckpt file, diffusers folder, a file "
                                                        "name in models/Stable-diffusion, or a Hugging Face Hub id "
                                                        "(org/name; offline: read from the local HF cache)")
    create.add_argument("--hub-token", default=None,
                        help="token for a private or gated Hub model (default: $HF_TOKEN or the saved login)")
    create.add_argument("--model-type", choices=("v1x", "v2x-512", "v2x", "SDXL"), default=None,
                        help="override the detected model type (v2x = SD2.x 768 v-prediction)")

    params = command("params", help="show or change a model's parameters (db_config.json)")
    params.add_argument("name")
    params.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a parameter (JSON for lists/objects); repeatable")
    params.add_argument("--show", action="store_true", help="list every parameter with its help and range")
    params.add_argument("--unknown", action="store_true",
                        help="list the keys of db_config.json this version does not use (kept in the file)")

    train = command("train", help="train a model (Ctrl-C cancels and saves)")
    train.add_argument("name")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="change a parameter for this run (saved to db_config.json); repeatable")
    train.add_argument("--resume", action="store_true", help="continue from the newest resume snapshot")

    ckpt = command("ckpt", help="Generate Ckpt: write the model as one checkpoint file")
    ckpt.add_argument("name")
    ckpt.add_argument("--half", action="store_true", default=None, help="fp16 weights")
    ckpt.add_argument("--subdir", action="store_true", default=None, help="into Stable-diffusion/<name>/")
    ckpt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a parameter for this export only, e.g. lora_model_name=NAME lora_weight=0.8 (merge a "
                      "LoRA from models/Lora)")

    samples = command("samples", help="generate sample images from the model's current weights")
    samples.add_argument("name")
    samples.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="a parameter for these samples only, e.g. lora_model_name=NAME lora_weight=0.8 (sample "
                         "with a LoRA merged in)")

    command("list", help="list the models")

    tiny = command("tiny-checkpoint", help="write the embedded tiny SD1.x checkpoint (random weights)")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--preset", choices=("tiny", "small", "tiny-v2", "tiny-v2v", "tiny-sdxl"), default="tiny")
    tiny.add_argument("--seed", type=int, default=0)

    command("demo", help="tiny checkpoint → create → train 2 epochs → ckpt, on any CPU")

    bench = command("bench", help="benchmark the trainer against a textbook training loop")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .platform.quiet import quiet_third_party

    quiet_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help") and not set(argv) & set(COMMANDS):
        argv.insert(0, "serve")  # `python -m dreambooth --port 7861`, as WebUI users type it
    if argv[:1] == ["bench"]:  # argparse's REMAINDER drops leading options: hand them over as they are
        from .tools.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "models_dir", None):
        os.environ["DREAMBOOTH_MODELS_DIR"] = str(Path(args.models_dir).expanduser().resolve())
    try:
        return COMMANDS[args.command or "serve"](args)
    except DreamboothError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a write the atomic writers did not see (logs): still one line
        from .platform.diskspace import disk_full_error, is_disk_full

        if not is_disk_full(error):
            raise
        print(f"error: {disk_full_error(Path(error.filename or '.').parent, None, 'the write')}", file=sys.stderr)
        return 2


def cmd_serve(args) -> int:
    from .ui.server import serve

    auth = getattr(args, "api_auth", os.environ.get("DREAMBOOTH_API_AUTH") or None)
    serve(port=getattr(args, "port", 7860), listen=getattr(args, "listen", False), auth=auth,
          data_roots=getattr(args, "data_root", []))
    return 0


def cmd_create(args) -> int:
    from .service.operations import create_model

    create_model(args.name, args.source, model_type=args.model_type, hub_token=args.hub_token)
    return 0


def cmd_params(args) -> int:
    from .service.operations import describe, load_params, save_params
    from .config import apply_assignments
    from .registry import FIELDS

    cfg, warnings = load_params(args.name)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.unknown:
        for key in sorted(cfg.extras):
            print(key)
        return 0
    if args.set:
        apply_assignments(cfg, args.set)
        print(f"saved {save_params(args.name, cfg)}")
    if args.show:
        for field in FIELDS:
            if not field.hidden:
                print(f"{field.name} = {getattr(cfg, field.name)!r}\n    [{field.group}] {field.label}: {field.help} "
                      f"Allowed: {field.describe_range()}.")
    elif not args.set:
        print(describe(cfg))
    return 0


def cmd_train(args) -> int:
    from .service.operations import load_params, train_model
    from .config import apply_assignments
    from .train.control import TrainControl

    cfg, warnings = load_params(args.name)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    apply_assignments(cfg, args.set)
    control = TrainControl(on_log=lambda message: print(message, file=sys.stderr))
    previous = signal.getsignal(signal.SIGINT)

    def cancel_on_interrupt(signum, frame):  # first Ctrl-C: cancel and save; second: stop at once
        control.log("cancel requested: stopping after this step, then saving (Ctrl-C again to abort)")
        control.request_cancel()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, cancel_on_interrupt)
    try:
        result = train_model(args.name, cfg, control, resume=args.resume)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.main_process:  # one report per run under accelerate launch
        _print_result(result)
    return 0


def _print_result(result) -> None:
    print(f"{result.state}: {result.steps} steps, revision {result.revision}, last loss "
          f"{result.last_loss if result.last_loss is None else round(result.last_loss, 5)}")
    for path in result.checkpoints:
        print(f"checkpoint: {path}")
    for path in result.samples[-4:]:
        print(f"sample: {path}")
    for path in result.charts:
        print(f"chart: {path}")


def cmd_ckpt(args) -> int:
    from .service.operations import generate_ckpt

    from .config import parse_assignments

    print(generate_ckpt(args.name, half=args.half, subdir=args.subdir, overrides=parse_assignments(args.set)))
    return 0


def cmd_samples(args) -> int:
    from .config import apply_assignments
    from .service.operations import generate_samples, load_params

    cfg, _ = load_params(args.name)
    apply_assignments(cfg, args.set)
    for path in generate_samples(args.name, cfg):
        print(path)
    return 0


def cmd_list(args) -> int:
    from .service.operations import list_models

    for name in list_models():
        print(name)
    return 0


def cmd_tiny_checkpoint(args) -> int:
    from .model.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(args.out, preset=args.preset, seed=args.seed)
    print(args.out)
    return 0


def cmd_demo(args) -> int:
    from .tools.demo import run_demo

    started = time.perf_counter()
    run_demo(DEMO_MODEL)
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_bench(args) -> int:
    from .tools.bench import main as bench_main

    return bench_main(args.rest)


COMMANDS = {
    "serve": cmd_serve, "create": cmd_create, "params": cmd_params, "train": cmd_train, "ckpt": cmd_ckpt,
    "samples": cmd_samples, "list": cmd_list, "tiny-checkpoint": cmd_tiny_checkpoint, "demo": cmd_demo,
    "bench": cmd_bench,
}
