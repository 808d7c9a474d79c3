"""SDXL's two text encoders as one module, its two tokenizers as one, and its diffusers folder.

SDXL conditions on both CLIP ViT-L (`text_encoder`) and OpenCLIP ViT-bigG with its projection
(`text_encoder_2`): the cross-attention context is both encoders' penultimate hidden states side by side,
and the pooled, projected output of the second one goes into the UNet's added ("text_time") embedding with
the image's size and crop. Holding both as one `DualTextEncoder` (and both tokenizers as one
`PairTokenizer`, whose ids are stacked as (N, 2, 77)) lets the trainer, caches, snapshots and exports
treat "the text encoder" the same for every model family; `trained` decides which of the two train.

Imports torch at the top: import this module lazily (only SDXL code paths reach it).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DreamboothError
from ..platform.fsutil import atomic_dir, atomic_write_json

PARTS = ("text_encoder", "text_encoder_2")


class DualTextEncoder(torch.nn.Module):
    """CLIP-L and OpenCLIP-bigG (with projection); forward(ids (N, 2, 77)) -> (context, pooled)."""

    is_dual_text_encoder = True

    def __init__(self, text_encoder, text_encoder_2):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.trained = PARTS  # which encoders train while text-encoder training is on

    def parts(self) -> dict:
        return {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}

    def forward(self, input_ids, clip_skip: int = 1):
        """SDXL's conditioning: each encoder's hidden state `clip_skip` layers before the last (1 = the
        penultimate, SDXL's own choice; no final layer norm), concatenated; and the second encoder's
        projected pooled output."""
        layer = -(max(1, clip_skip) + 1)
        first = self.text_encoder(input_ids[:, 0], output_hidden_states=True)
        second = self.text_encoder_2(input_ids[:, 1], output_hidden_states=True)
        context = torch.cat([first.hidden_states[layer], second.hidden_states[layer]], dim=-1)
        return context, second.text_embeds

    def select_trained(self, text_encoder: bool, text_encoder_2: bool) -> None:
        self.trained = tuple(name for name, on in zip(PARTS, (text_encoder, text_encoder_2)) if on)

    def requires_grad_(self, requires_grad: bool = True):
        """Training switches on only the encoders in `trained`; freezing freezes both."""
        super().requires_grad_(False)
        if requires_grad:
            for name in self.trained:
                getattr(self, name).requires_grad_(True)
        return self

    def train(self, mode: bool = True):
        super().train(False)
        if mode:
            for name in self.trained:
                getattr(self, name).train(True)
        return self

    def gradient_checkpointing_enable(self) -> None:
        for name in self.trained:
            getattr(self, name).gradient_checkpointing_enable()


class PairTokenizer:
    """Both SDXL tokenizers (CLIP-L pads with its end token, OpenCLIP with "!"). With tensors requested the
    ids are stacked (N, 2, length); otherwise (caption length checks) the first tokenizer answers."""

    def __init__(self, tokenizer, tokenizer_2):
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2

    @property
    def model_max_length(self) -> int:
        return min(self.tokenizer.model_max_length, self.tokenizer_2.model_max_length)

    def __call__(self, text, **kwargs):
        if kwargs.get("return_tensors") != "pt":
            return self.tokenizer(text, **kwargs)
        first, second = self.tokenizer(text, **kwargs), self.tokenizer_2(text, **kwargs)
        first["input_ids"] = torch.stack([first.input_ids, second.input_ids], dim=1)
        return first


def is_sdxl_folder(folder) -> bool:
    index = Path(folder) / "model_index.json"
    return index.is_file() and "text_encoder_2" in json.loads(index.read_text(encoding="utf-8"))


def build_text_encoder_2(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(**config))


def model_index(scheduler_class: str) -> dict:
    from .diffusers_io import model_index as sd_index

    index = dict(sd_index(scheduler_class), _class_name="StableDiffusionXLPipeline",
                 text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                 tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    for unused in ("safety_checker", "requires_safety_checker"):
        index.pop(unused)
    return index


def write_text_encoders(folder: Path, text_encoder) -> None:
    """The encoders that train into folder/text_encoder and/or folder/text_encoder_2 (each atomically);
    a frozen one is already there unchanged (OpenCLIP-bigG alone is 2.8 GB in fp32)."""
    from .diffusers_io import save_text_encoder

    for name in text_encoder.trained:
        with atomic_dir(Path(folder) / name) as tmp:
            save_text_encoder(tmp, getattr(text_encoder, name))


def save_sdxl_folder(folder, unet, vae, text_encoder, scheduler_config: dict, extras: dict | None = None) -> Path:
    """An SDXL diffusers folder (fp32 weights, both CLIP tokenizers) as one atomic folder. `extras`:
    OpenCLIP tensors the diffusers model has no place for (logit_scale), kept for the export."""
    from safetensors.torch import save_file

    from .diffusers_io import SCHEDULER_CONFIG, _diffusers_version, save_text_encoder
    from .openclip_map import EXTRAS_FILE
    from .tokenizer import write_clip_tokenizer

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        for name, module in text_encoder.parts().items():
            save_text_encoder(tmp / name, module)
        if extras:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in extras.items()}, str(tmp / EXTRAS_FILE))
        write_clip_tokenizer(tmp / "tokenizer")
        write_clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
        scheduler = dict(scheduler_config or SCHEDULER_CONFIG)
        scheduler.setdefault("_class_name", "PNDMScheduler")
        scheduler["_diffusers_version"] = _diffusers_version()
        atomic_write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        atomic_write_json(tmp / "model_index.json", model_index(scheduler["_class_name"]))
    return folder


def load_sdxl_components(folder):
    """(unet, vae, DualTextEncoder, PairTokenizer, scheduler_config) from a local SDXL folder, fp32, CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    missing = [n for n in ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                           "text_encoder_2/config.json", "tokenizer", "tokenizer_2",
                           "scheduler/scheduler_config.json") if not (folder / n).exists()]
    if missing:
        raise DreamboothError(f"'{folder}' is not a complete SDXL model folder (missing {', '.join(missing)})",
                              field="source")
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder_2"),
                                                                     local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DreamboothError(f"cannot load the SDXL model in '{folder}': {exc}", field="source") from exc
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return (unet, vae, DualTextEncoder(text_encoder, text_encoder_2), PairTokenizer(tokenizer, tokenizer_2),
            scheduler_config)
