"""Text-encoder output with clip skip, for both transformers 4.x (`.text_model`) and 5.x layouts."""
from __future__ import annotations


def final_layer_norm(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode_text(text_encoder, input_ids, clip_skip: int = 1):
    """The conditioning for `input_ids`: the last layer's output, or with clip_skip N the N-th last layer
    passed through the final layer norm (as the WebUI does)."""
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    hidden = text_encoder(input_ids, output_hidden_states=True).hidden_states[-clip_skip]
    return final_layer_norm(text_encoder)(hidden)


def pipeline_clip_skip(clip_skip: int) -> int | None:
    """diffusers counts skipped layers from the last one (1 = penultimate); we count like the WebUI."""
    return clip_skip - 1 if clip_skip > 1 else None
