"""The names of a kohya LoRA file's layers, per model family (lora_kohya.py: the file itself).

SD 1.x/2.x: kohya trains these on diffusers' UNet, so its files (and ours) name a UNet layer by its diffusers
module path, `lora_unet_down_blocks_0_attentions_0_proj_in`, and the text encoder's `lora_te_text_model_…`.

SDXL: kohya trains on the original (LDM) UNet, so SDXL files name a UNet layer by its LDM module path,
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`: the WebUI's Lora loader looks SDXL layers up
under those names (its own module paths), and diffusers' loader maps them back to its blocks. The path comes from
the name table the single-file export uses (ldm_map.unet_pairs). The text encoders are `lora_te1_…` (CLIP-L)
and `lora_te2_…` (OpenCLIP-bigG), both in transformers' CLIP module names (`text_model.encoder.layers.0.…`).

Older SDXL files of this program used the diffusers path for the UNet and `lora_te_text_model_text_encoder_…`
/ `…_text_encoder_2_…` for the text encoders; `LoraLayout.current` reads them under today's names.
"""
from __future__ import annotations

from typing import Iterable

from .ldm_map import renamed, unet_pairs
from .lora_kohya import TEXT_1_PREFIX, TEXT_2_PREFIX, TEXT_PREFIX, UNET_PREFIX, kohya_name

SD_TEXT = {"text_encoder": TEXT_PREFIX}
SDXL_TEXT = {"text_encoder": TEXT_1_PREFIX, "text_encoder_2": TEXT_2_PREFIX}  # DualTextEncoder's parts
_OLDER_SDXL_TEXT = ((f"{TEXT_PREFIX}_text_model_text_encoder_2_", TEXT_2_PREFIX),  # the longer one first
                    (f"{TEXT_PREFIX}_text_model_text_encoder_", TEXT_1_PREFIX))


# what only use_lora_extended adapts (ResNet and sampler convolutions), in either layout's names
_CONV_WORDS = ("resnets", "samplers", "in_layers", "out_layers", "emb_layers", "skip_connection", "_op", "_conv")


def is_conv_layer(name: str) -> bool:
    return name.startswith(UNET_PREFIX + "_") and any(word in name for word in _CONV_WORDS)


def is_sdxl(unet_config) -> bool:
    return dict(unet_config).get("addition_embed_type") == "text_time"


class LoraLayout:
    """Layer names for one UNet's family; `layout_for(unet)` builds it."""

    def __init__(self, unet_config):
        config = dict(unet_config)
        self.sdxl = is_sdxl(config)
        self.text_prefixes = SDXL_TEXT if self.sdxl else SD_TEXT  # text-encoder part -> prefix
        self._table = dict(unet_pairs(config)) if self.sdxl else None

    def unet_name(self, module: str) -> str | None:
        """The layer name of UNet module `module` (a diffusers path); None for SDXL modules outside the
        LDM name table (none that an adapter goes on)."""
        if self._table is None:
            return kohya_name(UNET_PREFIX, module)
        path = renamed(module, self._table)
        return kohya_name(UNET_PREFIX, path) if path is not None else None

    def text_encoders(self, text_encoder) -> dict:
        """{prefix: module}: SDXL's DualTextEncoder gives both of its encoders, any other text encoder itself."""
        if self.sdxl:
            return {self.text_prefixes[part]: module for part, module in text_encoder.parts().items()}
        return {TEXT_PREFIX: text_encoder}

    def trained_text_prefixes(self, text_encoder) -> tuple[str, ...]:
        """The prefixes of the encoders that train while text-encoder training is on (SDXL: those chosen by
        sdxl_train_text_encoder / sdxl_train_text_encoder_2)."""
        if self.sdxl:
            return tuple(self.text_prefixes[part] for part in text_encoder.trained)
        return (TEXT_PREFIX,)

    def current(self, layers: dict, unet_modules: Iterable[str]) -> dict:
        """`layers` ({layer name: parts}) with older SDXL names of this program renamed to today's;
        `unet_modules`: the UNet's module names (diffusers paths). SD 1.x/2.x names never changed."""
        if not self.sdxl:
            return layers
        older = {kohya_name(UNET_PREFIX, module): self.unet_name(module) for module in unet_modules}
        return {self._current_name(name, older): parts for name, parts in layers.items()}

    @staticmethod
    def _current_name(name: str, older_unet: dict[str, str | None]) -> str:
        if older_unet.get(name):
            return older_unet[name]
        for old, prefix in _OLDER_SDXL_TEXT:
            if name.startswith(old):
                rest = name[len(old):]  # written under transformers 5, CLIP-L's names lacked text_model
                return f"{prefix}_{rest if rest.startswith('text_model_') else 'text_model_' + rest}"
        return name


def layout_for(unet) -> LoraLayout:
    return LoraLayout(unet.config)
