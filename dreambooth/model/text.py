"""Text-encoder output with clip skip, for both transformers 4.x (`.text_model`) and 5.x layouts, and for
SDXL's pair of encoders (convert.sdxl_io.DualTextEncoder), which also gives a pooled embedding."""
from __future__ import annotations

from .long_prompts import WINDOW


def final_layer_norm(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode_text(text_encoder, input_ids, clip_skip: int = 1):
    """The conditioning for `input_ids`: the last layer's output, or with clip_skip N the N-th last layer
    passed through the final layer norm (as the WebUI does). Ids longer than the encoder's window (long
    prompts, see long_prompts) are encoded one 77-token window at a time and joined."""
    window = WINDOW
    if input_ids.shape[1] > window:
        import torch

        return torch.cat([_encode(text_encoder, input_ids[:, start:start + window], clip_skip)
                          for start in range(0, input_ids.shape[1], window)], dim=1)
    return _encode(text_encoder, input_ids, clip_skip)


def _encode(text_encoder, input_ids, clip_skip: int):
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    hidden = text_encoder(input_ids, output_hidden_states=True).hidden_states[-clip_skip]
    return final_layer_norm(text_encoder)(hidden)


def is_dual(text_encoder) -> bool:
    """SDXL's two encoders (also when accelerate or DDP wrapped them: `.module`)."""
    return getattr(getattr(text_encoder, "module", text_encoder), "is_dual_text_encoder", False)


def encode_prompts(text_encoder, input_ids, clip_skip: int = 1):
    """(context, pooled): the cross-attention conditioning, and SDXL's pooled text embedding (None for
    SD1/SD2, whose UNet takes none). SDXL's ids are (N, 2, 77), one row per tokenizer."""
    if is_dual(text_encoder):
        return text_encoder(input_ids, clip_skip)
    return encode_text(text_encoder, input_ids, clip_skip), None


def pipeline_clip_skip(clip_skip: int) -> int | None:
    """diffusers counts skipped layers from the last one (1 = penultimate); we count like the WebUI."""
    return clip_skip - 1 if clip_skip > 1 else None
