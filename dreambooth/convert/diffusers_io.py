"""A complete diffusers Stable Diffusion folder: write one from components, load one back.

The text encoder is written by hand with `text_model.`-prefixed keys: transformers 5 saves them without
the prefix, which transformers 4.30 then silently ignores (random text encoder). With the prefix both load.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DreamboothError
from ..platform.fsutil import atomic_dir, atomic_write_json

# Stable Diffusion 1.x's noise schedule, carried here rather than fetched.
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
}

TEXT_ENCODER_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "hidden_act", "layer_norm_eps", "attention_dropout", "dropout",
                     "initializer_range", "initializer_factor", "bos_token_id", "eos_token_id", "pad_token_id",
                     "projection_dim")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def model_config(module) -> dict:
    """A JSON-able config dict of a diffusers model or CLIPTextModel (private/version keys dropped)."""
    config = module.config
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        data = config.to_dict()
        return {k: data[k] for k in TEXT_ENCODER_KEYS if k in data}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def text_encoder_state_dict(text_encoder) -> dict:
    from .ldm_map import te_with_prefix

    if hasattr(text_encoder, "text_projection"):  # SDXL's CLIPTextModelWithProjection: the same keys everywhere
        return text_encoder.state_dict()
    return te_with_prefix(text_encoder.state_dict())


def load_text_encoder_weights(model, state_dict: dict) -> None:
    """Load `text_model.`-prefixed weights into a CLIPTextModel of either transformers generation."""
    own = model.state_dict()
    if not any(k.startswith("text_model.") for k in own):
        state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    state_dict = {k: v for k, v in state_dict.items() if k in own}
    missing = [k for k in own if k not in state_dict and not k.endswith("position_ids")]
    if missing:
        raise DreamboothError(f"the text encoder weights lack {missing[:3]}: the checkpoint is incomplete",
                              field="source")
    model.load_state_dict(state_dict, strict=False)


def build_text_encoder(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**config))


def save_text_encoder(folder: Path, text_encoder) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in text_encoder_state_dict(text_encoder).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = CLIPTextConfig(**model_config(text_encoder)).to_dict()
    config["architectures"] = [type(text_encoder).__name__]  # CLIPTextModel, or SDXL's WithProjection
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    atomic_write_json(folder / "config.json", config)


def write_text_encoders(folder, text_encoder) -> None:
    """The (trained) text encoder(s) into a working folder, each folder replaced atomically; SDXL's
    DualTextEncoder writes text_encoder/ and text_encoder_2/."""
    if getattr(text_encoder, "is_dual_text_encoder", False):
        from .sdxl_io import write_text_encoders as write_both

        write_both(Path(folder), text_encoder)
        return
    with atomic_dir(Path(folder) / "text_encoder") as tmp:
        save_text_encoder(tmp, text_encoder)


def model_index(scheduler_class: str = "PNDMScheduler") -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_pipeline_folder(folder, unet, vae, text_encoder, tokenizer=None, scheduler_config: dict | None = None,
                         extras: dict | None = None, pad_token: str | None = None) -> Path:
    """Write model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ as one atomic folder.

    `tokenizer`: a folder to copy, a tokenizer object (save_pretrained), or None for the CLIP tokenizer
    (padding with `pad_token`: SD2 pads with "!", SD1 with the end token). `extras`: SD2's unused OpenCLIP
    tensors, kept in openclip_extra.safetensors for the export (see openclip_map).
    """
    import shutil

    from .tokenizer import write_clip_tokenizer

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        save_text_encoder(tmp / "text_encoder", text_encoder)
        if extras:
            from safetensors.torch import save_file

            from .openclip_map import EXTRAS_FILE

            save_file({k: v.detach().to("cpu").contiguous() for k, v in extras.items()}, str(tmp / EXTRAS_FILE))
        if tokenizer is None:
            write_clip_tokenizer(tmp / "tokenizer", **({"pad_token": pad_token} if pad_token else {}))
        elif isinstance(tokenizer, (str, Path)):
            shutil.copytree(tokenizer, tmp / "tokenizer")
            if not (tmp / "tokenizer" / "vocab.json").exists():  # transformers 4.30 needs vocab + merges
                write_clip_tokenizer(tmp / "tokenizer")
        else:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
            if not (tmp / "tokenizer" / "vocab.json").exists():  # transformers 5 writes only tokenizer.json
                write_clip_tokenizer(tmp / "tokenizer")
        scheduler = dict(SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
        scheduler.setdefault("_class_name", "PNDMScheduler")
        scheduler["_diffusers_version"] = _diffusers_version()
        atomic_write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        atomic_write_json(tmp / "model_index.json", model_index(scheduler["_class_name"]))
    return folder


def check_folder(folder) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamboothError(f"model folder '{folder}' does not exist", field="model_name")
    needed = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
              "tokenizer", "scheduler/scheduler_config.json"]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise DreamboothError(f"'{folder}' is not a complete diffusers model folder (missing {', '.join(missing)})",
                              field="source")
    return folder


def load_components(folder):
    """(unet, vae, text_encoder, tokenizer, scheduler_config) from a local diffusers folder, fp32, CPU.
    An SDXL folder gives both text encoders as one DualTextEncoder and both tokenizers as a PairTokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = check_folder(folder)
    if (folder / "text_encoder_2").is_dir():
        from .sdxl_io import load_sdxl_components

        return load_sdxl_components(folder)
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DreamboothError(f"cannot load the model in '{folder}': {exc}", field="source") from exc
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return unet, vae, text_encoder, tokenizer, scheduler_config
