"""modules.sd_models: checkpoint list, model_data, unload/send to device, as A1111 1.10 behaves."""
import os
import threading
import time
import types

from modules import paths_internal, shared

model_path = os.path.join(paths_internal.models_path, "Stable-diffusion")
checkpoints_list = {}
calls = []  # ("list_models",), ("unload", model), ("to_device", model)


class FakeModel:
    device = "cuda"


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        self.name = os.path.relpath(filename, model_path)
        self.model_name = os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]
        self.title = self.name
        self.is_safetensors = filename.endswith(".safetensors")


model_data = types.SimpleNamespace(sd_model=None)


refilling = threading.Event()  # set while list_models has emptied the list and not yet refilled it
REFILL_SECONDS = 0.2  # the real host walks folders and builds titles meanwhile


def list_models():
    """As A1111: the list is emptied first, then refilled; a txt2img arriving in between finds nothing.
    The list is a cache: filled at start-up and by a refresh, never when a file appears on disk. The
    --ckpt file is listed wherever it lives (outside the models folder too)."""
    calls.append(("list_models",))
    checkpoints_list.clear()
    refilling.set()
    time.sleep(REFILL_SECONDS)
    if shared.cmd_opts.ckpt and os.path.exists(shared.cmd_opts.ckpt):
        info = CheckpointInfo(os.path.abspath(shared.cmd_opts.ckpt))
        checkpoints_list[info.title] = info
    dirs = [model_path] + ([shared.cmd_opts.ckpt_dir] if shared.cmd_opts.ckpt_dir else [])
    for folder in dirs:
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                if name.endswith((".safetensors", ".ckpt")):
                    info = CheckpointInfo(os.path.join(root, name))
                    checkpoints_list[info.title] = info
    refilling.clear()


def select_checkpoint():
    """What txt2img does under the generation lock before it generates."""
    if not checkpoints_list:
        raise FileNotFoundError("No checkpoints found")
    return next(iter(checkpoints_list.values()))


def send_model_to_cpu(m):
    m.device = "cpu"


def send_model_to_device(m):
    calls.append(("to_device", m))
    m.device = "cuda"


def unload_model_weights(sd_model=None, info=None):
    model = sd_model or shared.sd_model  # A1111's gotcha: with nothing loaded this loads a model
    calls.append(("unload", model))
    send_model_to_cpu(model)
    return sd_model
