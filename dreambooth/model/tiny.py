"""The embedded default model: a tiny SD1-topology Stable Diffusion with seeded random weights.

Presets: "tiny" and "small" (SD1.x-shaped), "tiny-v2" (SD2.x-shaped, epsilon), "tiny-v2v" (SD2.x-shaped,
v-prediction; the prediction type travels in the checkpoint's metadata) and "tiny-sdxl" (SDXL-shaped: two
text encoders, added size/text embedding).

Built in code (no download) so newcomers and tests can train end to end in seconds on a CPU. It keeps
SD1.x's block pattern and its ×8 VAE, so every converter, the WebUI and diffusers treat it like SD1.5.
"""
from __future__ import annotations

import random
from pathlib import Path

PRESET_RESOLUTION = {"tiny": 64, "small": 128}

_CLIP = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 5,
         "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
         "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
         "projection_dim": 32}


def _unet(channels, resolution: int) -> dict:
    # SD1 pattern: cross-attention at every level but the deepest. Channels are multiples of 32 because
    # the single-file loaders assume norm_num_groups=32.
    levels = len(channels)
    return {"sample_size": resolution // 8, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
            "block_out_channels": list(channels), "layers_per_block": 2, "cross_attention_dim": _CLIP["hidden_size"],
            "attention_head_dim": 8, "norm_num_groups": 32}


def _vae(channels, resolution: int) -> dict:
    levels = len(channels)  # 4 levels = ×8 downscale, like SD
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels, "block_out_channels": list(channels),
            "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "act_fn": "silu",
            "sample_size": resolution, "scaling_factor": 0.18215}


# SD2.x-shaped: an OpenCLIP-style text encoder (exact GELU, 4x MLP, padding with "!"; its single-file form
# carries one more, unused, residual block because SD2 conditions on the penultimate layer) and a UNet with
# linear proj_in/proj_out and per-block head counts (32-dim heads here; SD2 itself uses 64).
_OPENCLIP = {"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
             "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu",
             "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0,
             "projection_dim": 64}


def _unet_v2(channels, resolution: int) -> dict:
    return dict(_unet(channels, resolution), cross_attention_dim=_OPENCLIP["hidden_size"], use_linear_projection=True,
                attention_head_dim=[max(1, c // 32) for c in channels])


PRESETS = {
    "tiny": {"unet": _unet((32, 64, 64), 64), "vae": _vae((32, 32, 64, 64), 64), "text_encoder": dict(_CLIP)},
    "small": {"unet": _unet((64, 128, 256), 128), "vae": _vae((32, 64, 128, 128), 128), "text_encoder": dict(_CLIP)},
    "tiny-v2": {"unet": _unet_v2((32, 64, 64), 64), "vae": _vae((32, 32, 64, 64), 64),
                "text_encoder": dict(_OPENCLIP)},
    "tiny-v2v": {"unet": _unet_v2((32, 64, 64), 64), "vae": _vae((32, 32, 64, 64), 64),
                 "text_encoder": dict(_OPENCLIP)},
}
# SDXL-shaped: CLIP-L-like and OpenCLIP-bigG-like text encoders (different widths, as in SDXL, so that
# loaders tell them apart; the second with a projection to a third width, so a transposed projection
# cannot pass unnoticed), a UNet with SDXL's topology (no attention at the first level, deeper
# transformers further down, linear projections, cross-attention on both encoders' states side by side)
# and its added "text_time" embedding (pooled text + 6 size/crop values, each in 8 sinusoidal features).
_OPENCLIP_G = dict(_OPENCLIP, projection_dim=48)
_SDXL_TIME_DIM = 8


def _unet_xl(channels, resolution: int) -> dict:
    levels = len(channels)
    return {"sample_size": resolution // 8, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (levels - 1),
            "up_block_types": ["CrossAttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"],
            "block_out_channels": list(channels), "layers_per_block": 2,
            "transformer_layers_per_block": [1] * (levels - 1) + [2],
            "attention_head_dim": [max(1, c // 32) for c in channels], "use_linear_projection": True,
            "cross_attention_dim": _CLIP["hidden_size"] + _OPENCLIP_G["hidden_size"], "norm_num_groups": 32,
            "addition_embed_type": "text_time", "addition_time_embed_dim": _SDXL_TIME_DIM,
            "projection_class_embeddings_input_dim": 6 * _SDXL_TIME_DIM + _OPENCLIP_G["projection_dim"]}


PRESETS["tiny-sdxl"] = {"unet": _unet_xl((32, 64, 64), 64),
                        "vae": dict(_vae((32, 32, 64, 64), 64), scaling_factor=0.13025),
                        "text_encoder": dict(_CLIP), "text_encoder_2": dict(_OPENCLIP_G)}
# SD1.5's real shapes (UNet 860M, VAE 83M, CLIP ViT-L/14 text encoder 123M) with seeded random weights:
# what `bench --preset sd15` measures memory with, at the size users train. Not for the tab or tests.
_CLIP_L = dict(_CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768)
PRESETS["sd15"] = {"unet": dict(_unet((320, 640, 1280, 1280), 512), cross_attention_dim=768),
                   "vae": _vae((128, 256, 512, 512), 512), "text_encoder": _CLIP_L}
PRESET_RESOLUTION.update({"tiny-v2": 64, "tiny-v2v": 64, "tiny-sdxl": 64, "sd15": 512})
PRESET_PREDICTION = {"tiny-v2v": "v_prediction"}  # the others: epsilon


def preset_configs(preset: str) -> dict:
    from ..errors import DreamboothError

    if preset not in PRESETS:
        raise DreamboothError(f"unknown tiny model preset '{preset}': use one of {', '.join(PRESETS)}", field="preset")
    return {name: dict(cfg) for name, cfg in PRESETS[preset].items()}


def build_components(preset: str = "tiny", seed: int = 0) -> dict:
    """{"unet", "vae", "text_encoder", "scheduler_config", "configs"}: fresh fp32 modules, same weights per seed.
    For "tiny-sdxl" the text encoder is a DualTextEncoder holding both."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..convert.diffusers_io import SCHEDULER_CONFIG, build_text_encoder

    configs = preset_configs(preset)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text_encoder = build_text_encoder(configs["text_encoder"])
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae, text_encoder):
        _seeded_init(module, generator)
    if "text_encoder_2" in configs:
        from ..convert.sdxl_io import DualTextEncoder, build_text_encoder_2

        text_encoder_2 = build_text_encoder_2(configs["text_encoder_2"])
        _seeded_init(text_encoder_2, generator)  # on its own: its names must not depend on the wrapper
        text_encoder = DualTextEncoder(text_encoder, text_encoder_2)
    scheduler_config = dict(SCHEDULER_CONFIG, prediction_type=PRESET_PREDICTION.get(preset, "epsilon"))
    return {"unet": unet.float().eval(), "vae": vae.float().eval(), "text_encoder": text_encoder.float().eval(),
            "scheduler_config": scheduler_config, "configs": configs}


def _seeded_init(module, generator) -> None:
    """Our own init, in sorted parameter-name order: the library's default init (and its RNG use) differs
    between transformers/diffusers versions, and the same seed must give the same model on every stack."""
    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name in sorted(params, key=lambda n: n.removeprefix("text_model.")):
            tensor = params[name]
            if "embedding" in name and tensor.ndim == 2:
                values = torch.randn(tensor.shape, generator=generator) * 0.02  # CLIP's embedding init
            elif tensor.ndim >= 2:
                bound = (tensor[0].numel()) ** -0.5  # PyTorch's default bound 1/sqrt(fan_in)
                values = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound
            elif name.endswith("weight"):  # norm scales
                values = torch.ones(tensor.shape)
            else:
                values = torch.zeros(tensor.shape)
            tensor.copy_(values)


def write_tiny_checkpoint(out_path, preset: str = "tiny", seed: int = 0) -> Path:
    """A single-file LDM-layout checkpoint of the preset (what a user would pick as a source)."""
    from ..convert.export import export_single_file

    parts = build_components(preset, seed)
    return export_single_file(parts, out_path, half=False,
                              metadata={"dreambooth_preset": preset, "dreambooth_seed": str(seed)})


def _demo_image(rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    top = tuple(rng.randint(150, 230) for _ in range(3))
    bottom = tuple(max(0, c - rng.randint(40, 90)) for c in top)
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):  # vertical background gradient
        t = y / max(1, size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    # the "subject": the same red-capped teal toy in slightly different places and sizes
    radius = size * rng.uniform(0.2, 0.28)
    cx, cy = size * rng.uniform(0.38, 0.62), size * rng.uniform(0.45, 0.62)
    body = (20 + rng.randint(0, 20), 150 + rng.randint(0, 30), 140 + rng.randint(0, 30))
    draw.ellipse([cx - radius, cy - radius * 0.8, cx + radius, cy + radius * 0.8], fill=body, outline=(10, 40, 40))
    cap = radius * 0.55
    draw.ellipse([cx - cap, cy - radius * 0.8 - cap, cx + cap, cy - radius * 0.8 + cap * 0.6], fill=(210, 40, 40))
    eye = max(1.0, radius * 0.12)
    for dx in (-0.35, 0.35):
        ex, ey = cx + dx * radius, cy - radius * 0.15
        draw.ellipse([ex - eye, ey - eye, ex + eye, ey + eye], fill=(15, 15, 15))
    return image


def write_demo_images(folder, count: int = 6, size: int = 64, seed: int = 0) -> list[Path]:
    """`count` PNG instance images of one procedurally drawn subject, slightly varied (seeded)."""
    from ..platform.fsutil import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(count):
        path = folder / f"demo_{index:02d}.png"
        with atomic_path(path) as tmp:
            _demo_image(rng, size).save(tmp, format="PNG")
        written.append(path)
    return written
