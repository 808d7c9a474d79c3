"""Write a single-file checkpoint in the WebUI's (LDM) key layout.

Sources, freely mixed: a working diffusers folder (weights read straight from its safetensors files, no
model construction) and/or live modules (the trainer's unet/text_encoder). The file carries our
"dreambooth_configs" metadata so that create_working re-creates the exact same diffusers configs.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DreamboothError
from ..platform.diskspace import tensor_bytes
from ..platform.fsutil import atomic_path
from .checkpoint_io import load_state_dict
from .detect import CLIP_PREFIX
from .ldm_infer import CONFIGS_METADATA_KEY

COMPONENTS = ("unet", "vae", "text_encoder")
SDXL_COMPONENTS = COMPONENTS + ("text_encoder_2",)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
_WEIGHT_FILES = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                 "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                 "text_encoder": ("model.safetensors", "pytorch_model.bin"),
                 "text_encoder_2": ("model.safetensors", "pytorch_model.bin")}


def _from_folder(folder: Path, name: str) -> tuple[dict, dict]:
    from .diffusers_io import TEXT_ENCODER_KEYS

    sub = folder / name
    config_file = sub / "config.json"
    if not config_file.is_file():
        raise DreamboothError(f"'{folder}' has no {name}/config.json: not a complete model folder", field="model_name")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if name in TEXT_ENCODERS:
        config = {k: config[k] for k in TEXT_ENCODER_KEYS if k in config}
    else:
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    for filename in _WEIGHT_FILES[name]:
        if (sub / filename).is_file():
            return load_state_dict(sub / filename)[0], config
    raise DreamboothError(f"'{sub}' holds no weights file", field="model_name")


def _from_module(module, name: str) -> tuple[dict, dict]:
    from .diffusers_io import model_config, text_encoder_state_dict

    state = text_encoder_state_dict(module) if name in TEXT_ENCODERS else module.state_dict()
    return state, model_config(module)


def _modules_of(source, modules: dict) -> dict:
    """The given modules by component name; SDXL's DualTextEncoder counts as both of its encoders."""
    if isinstance(source, dict):
        modules = {**source, **{k: v for k, v in modules.items() if v is not None}}
    modules = {k: v for k, v in modules.items() if v is not None}
    if getattr(modules.get("text_encoder"), "is_dual_text_encoder", False):
        modules.update(modules.pop("text_encoder").parts())
    return modules


def gather(source=None, fallback=None, components=COMPONENTS, **modules) -> tuple[dict, dict]:
    """({name: state_dict}, {name: config}) for the components from modules and/or a folder.
    A dict `source` may leave components out (or None): they are read from the `fallback` folder."""
    modules = _modules_of(source, modules)
    if isinstance(source, dict):
        source = fallback
    states, configs = {}, {}
    for name in components:
        if modules.get(name) is not None:
            states[name], configs[name] = _from_module(modules[name], name)
        elif source is not None:
            states[name], configs[name] = _from_folder(Path(source), name)
        else:
            raise ValueError(f"export_single_file: no {name} given and no working folder to read it from")
    return states, configs


def _working_facts(source, working, prediction_type):
    """(prediction type, SD2 OpenCLIP extras) from the working folder / the source dict, where known."""
    folder = Path(working) if working is not None else (Path(source) if isinstance(source, (str, Path)) else None)
    if prediction_type is None and isinstance(source, dict) and source.get("scheduler_config"):
        prediction_type = source["scheduler_config"].get("prediction_type")
    extras = None
    if folder is not None:
        from .openclip_map import EXTRAS_FILE

        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        if prediction_type is None and scheduler_file.is_file():
            prediction_type = json.loads(scheduler_file.read_text(encoding="utf-8")).get("prediction_type")
        if (folder / EXTRAS_FILE).is_file():
            extras = load_state_dict(folder / EXTRAS_FILE)[0]
    return prediction_type or "epsilon", extras


def _is_sdxl(source, working, text_encoder) -> bool:
    """SDXL when a text encoder given is the dual one, or the folder the components come from is SDXL."""
    from .sdxl_io import is_sdxl_folder

    given = [text_encoder] + ([source.get("text_encoder")] if isinstance(source, dict) else [])
    if any(getattr(module, "is_dual_text_encoder", False) for module in given):
        return True
    folder = working if working is not None else (source if isinstance(source, (str, Path)) else None)
    return folder is not None and is_sdxl_folder(folder)


def export_single_file(source, out_path, half: bool = False, metadata: dict | None = None, *,
                       unet=None, vae=None, text_encoder=None, working=None, prediction_type: str | None = None) -> Path:
    """Write `out_path` (.safetensors, or .ckpt as {"state_dict": ...}) atomically; fp16 floats when `half`.

    `source`: a working diffusers folder, a dict {"unet", "vae", "text_encoder"} of modules (optionally
    "scheduler_config"; SDXL: "text_encoder" is the DualTextEncoder), or None; the keyword modules override
    the folder's components. `working`: the model's working folder when `source` is modules: its scheduler's
    prediction type is recorded in the metadata and SD2's carried OpenCLIP extras (SDXL's logit_scale) are
    written back (else an identity last block / CLIP's initial scale).
    """
    import torch

    from .ldm_map import diffusers_to_ldm

    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt"):
        raise DreamboothError(f"cannot write '{out_path.name}': the file name must end in .safetensors or .ckpt",
                              field="save_safetensors")
    prediction, extras = _working_facts(source, working, prediction_type)
    sdxl = _is_sdxl(source, working, text_encoder)
    states, configs = gather(source, working, SDXL_COMPONENTS if sdxl else COMPONENTS,
                             unet=unet, vae=vae, text_encoder=text_encoder)
    if sdxl:
        from .sdxl_map import diffusers_to_sdxl

        ldm = diffusers_to_sdxl(states, configs, extras)
    else:
        ldm = diffusers_to_ldm(states["unet"], states["vae"], states["text_encoder"], configs, te_extras=extras)
    configs = dict(configs, scheduler={"prediction_type": prediction})
    # SD1 checkpoints carry CLIP's position_ids buffer; transformers 5 no longer has it in its state dict.
    positions = f"{CLIP_PREFIX}text_model.embeddings.position_ids"
    if positions not in ldm and any(k.startswith(CLIP_PREFIX) for k in ldm):
        ldm[positions] = torch.arange(configs["text_encoder"]["max_position_embeddings"]).unsqueeze(0)
    tensors = {}
    for key, tensor in ldm.items():
        tensor = tensor.detach().to("cpu")
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        tensors[key] = tensor.contiguous()
    info = {str(k): str(v) for k, v in (metadata or {}).items()}
    info[CONFIGS_METADATA_KEY] = json.dumps(configs, sort_keys=True)
    info.setdefault("format", "pt")
    with atomic_path(out_path, need=tensor_bytes(tensors)) as tmp:  # a full disk: refused before writing
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=info)
        else:
            torch.save({"state_dict": tensors, **info}, str(tmp))
    return out_path
