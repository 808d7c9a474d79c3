"""SD2.x text encoder: the OpenCLIP single-file layout (`cond_stage_model.model.*`) <-> transformers CLIPTextModel.

SD2 conditions on the *penultimate* layer of OpenCLIP ViT-H/14's text tower (the LDM configs say
`layer: "penultimate"`): the file has 24 residual blocks, the diffusers text encoder 23, and the
diffusers model's final layer norm is OpenCLIP's `ln_final` applied to the 23rd block's output. So on
import the last block (and `text_projection`, `logit_scale`, which SD2 never uses either) are not part of
the trained model; they are kept as "extras" beside the working folder and written back unchanged on
export. Where no extras exist (a model born as diffusers), the exported last block is an exact identity
block (zero projections, unit layer norms): a pre-norm residual block with zero output projections returns
its input, so even a loader that does run the last block gets the penultimate output; every strict
loader finds every key it expects.
"""
from __future__ import annotations

import re

OPENCLIP_PREFIX = "cond_stage_model.model."
EXTRAS_FILE = "openclip_extra.safetensors"  # in the working folder, beside model_index.json

_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias"}
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def is_openclip_config(text_encoder_config: dict) -> bool:
    """OpenCLIP text towers use exact GELU; OpenAI CLIP (SD1.x) uses quick_gelu."""
    return text_encoder_config.get("hidden_act") == "gelu"


def strip(state_dict: dict) -> dict:
    return {k[len(OPENCLIP_PREFIX):]: v for k, v in state_dict.items() if k.startswith(OPENCLIP_PREFIX)}


def block_count(openclip: dict) -> int:
    found = {int(m.group(1)) for k in openclip if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def openclip_to_clip(openclip: dict, num_layers: int) -> tuple[dict, dict]:
    """(`text_model.*` state dict of a `num_layers` CLIPTextModel, extras) from prefix-stripped OpenCLIP keys.

    Extras: the blocks from `num_layers` on, `text_projection`, `logit_scale` (OpenCLIP names).
    """
    from ..errors import DreamboothError

    te, extras = {}, {}
    for key, tensor in openclip.items():
        if key in _TOP:
            te[_TOP[key]] = tensor
            continue
        m = _IN_PROJ.match(key)
        if m and int(m.group(1)) < num_layers:
            q, k, v = tensor.chunk(3, dim=0)
            base = f"text_model.encoder.layers.{m.group(1)}.self_attn"
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                te[f"{base}.{name}.{m.group(2)}"] = part.contiguous()
            continue
        m = _BLOCK_KEY.match(key)
        if m and int(m.group(1)) < num_layers:
            if m.group(2) not in _BLOCK:
                raise DreamboothError(f"unexpected OpenCLIP text encoder key '{key}': unsupported SD2.x layout",
                                      field="source")
            te[f"text_model.encoder.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"] = tensor
            continue
        if m or key in ("text_projection", "logit_scale"):
            extras[key] = tensor
        # anything else (a stray visual tower, attn_mask buffers) is not part of SD2's conditioning
    return te, extras


def identity_block(index: int, hidden: int, intermediate: int, dtype=None) -> dict:
    """An OpenCLIP residual block that returns its input unchanged (zero output projections)."""
    import torch

    z = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
    b = f"transformer.resblocks.{index}."
    return {b + "ln_1.weight": torch.ones(hidden, dtype=dtype), b + "ln_1.bias": z(hidden),
            b + "attn.in_proj_weight": z(3 * hidden, hidden), b + "attn.in_proj_bias": z(3 * hidden),
            b + "attn.out_proj.weight": z(hidden, hidden), b + "attn.out_proj.bias": z(hidden),
            b + "ln_2.weight": torch.ones(hidden, dtype=dtype), b + "ln_2.bias": z(hidden),
            b + "mlp.c_fc.weight": z(intermediate, hidden), b + "mlp.c_fc.bias": z(intermediate),
            b + "mlp.c_proj.weight": z(hidden, intermediate), b + "mlp.c_proj.bias": z(hidden)}


def default_extras(config: dict, dtype=None) -> dict:
    """Extras for a text encoder that has none: an identity last block, an identity-like projection and
    CLIP's initial logit scale (log 1/0.07)."""
    import math

    import torch

    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    extras = identity_block(layers, hidden, config["intermediate_size"], dtype)
    extras["text_projection"] = torch.eye(hidden, config.get("projection_dim") or hidden, dtype=dtype)
    extras["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=dtype)
    return extras


def clip_to_openclip(te_state: dict, config: dict, extras: dict | None = None) -> dict:
    """Prefix-stripped OpenCLIP keys from a CLIPTextModel state dict (with or without `text_model.`), with
    SD2's unused last block, projection and logit scale (`extras`, else defaults)."""
    out = clip_layers_to_openclip(te_state)
    layers = config["num_hidden_layers"]
    dtype = out["token_embedding.weight"].dtype
    fallback = default_extras(config, dtype)
    extras = dict(extras or {})
    last_block = {k for k in extras if k.startswith(f"transformer.resblocks.{layers}.")}
    if len(last_block) != len([k for k in fallback if k.startswith(f"transformer.resblocks.{layers}.")]):
        extras = {k: v for k, v in extras.items() if not k.startswith("transformer.resblocks.")}
    for key, tensor in fallback.items():
        chosen = extras.get(key, tensor)
        if tuple(chosen.shape) != tuple(tensor.shape):  # extras of another geometry: not ours to write
            chosen = tensor
        out[key] = chosen
    return out


def clip_layers_to_openclip(te_state: dict) -> dict:
    """The OpenCLIP keys of a CLIPTextModel's embeddings, blocks (q/k/v joined into in_proj) and final norm."""
    import torch

    from ..errors import DreamboothError

    inverse_top = {v: k for k, v in _TOP.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    out, qkv = {}, {}
    for key, tensor in te_state.items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        if key.endswith("position_ids"):
            continue
        if key in inverse_top:
            out[inverse_top[key]] = tensor
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            raise DreamboothError(f"unexpected text encoder key '{key}' for the OpenCLIP layout")
        index, module, kind = m.groups()
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((index, kind), {})[module[-6]] = tensor
        elif module in inverse_block:
            out[f"transformer.resblocks.{index}.{inverse_block[module]}.{kind}"] = tensor
        else:
            raise DreamboothError(f"unexpected text encoder key '{key}' for the OpenCLIP layout")
    for (index, kind), parts in qkv.items():
        out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def infer_openclip_config(openclip: dict, stored: dict) -> dict:
    """CLIPTextModel config (SD2 conventions) from prefix-stripped OpenCLIP tensors and stored metadata."""
    from ..errors import DreamboothError

    if "token_embedding.weight" not in openclip or "transformer.resblocks.0.mlp.c_fc.weight" not in openclip:
        raise DreamboothError("the checkpoint's OpenCLIP text encoder is incomplete (no token embedding or "
                              "resblocks): not a complete SD2.x model", field="source")
    vocab, hidden = openclip["token_embedding.weight"].shape
    blocks = block_count(openclip)
    projection = openclip.get("text_projection")
    defaults = {"num_attention_heads": max(1, hidden // 64), "hidden_act": "gelu", "layer_norm_eps": 1e-5,
                "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0,
                "projection_dim": int(projection.shape[1]) if projection is not None else int(hidden)}
    cfg = {**defaults, **stored}
    cfg.update({"vocab_size": int(vocab), "hidden_size": int(hidden),
                "intermediate_size": int(openclip["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                # SD2 uses the penultimate layer: the last block is not part of the diffusers model
                "num_hidden_layers": max(1, blocks - 1),
                "max_position_embeddings": int(openclip["positional_embedding"].shape[0])})
    return cfg
