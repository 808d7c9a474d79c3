"""Single-file <-> diffusers conversion on the real tiny model (offline, no mocks)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import folder_weights  # noqa: E402
from dreambooth.convert.checkpoint_io import load_state_dict  # noqa: E402
from dreambooth.convert.create import create_working  # noqa: E402
from dreambooth.convert.detect import detect_model_type  # noqa: E402
from dreambooth.convert.diffusers_io import load_components  # noqa: E402
from dreambooth.convert.export import export_single_file  # noqa: E402
from dreambooth.convert.ldm_infer import infer_configs  # noqa: E402
from dreambooth.convert.ldm_map import diffusers_to_ldm, ldm_to_diffusers  # noqa: E402
from dreambooth.errors import DreamboothError  # noqa: E402
from dreambooth.model.tiny import write_tiny_checkpoint  # noqa: E402

quiet = lambda message: None  # noqa: E731


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def working(tiny_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "working"
    info = create_working(tiny_ckpt, folder, progress=quiet)
    assert info["model_type"] == "v1x" and info["parameters"]["unet"] > 0
    return folder


def _outputs(unet, vae, text_encoder):
    """Deterministic forward outputs of the three components on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([[49406, 320, 1125, 539, 48136, 1929, 49407] + [49407] * 70])
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        noise = unet(latents, 10, encoder_hidden_states=hidden).sample
        decoded = vae.decode(latents).sample
        encoded = vae.encode(image).latent_dist.mean
    return hidden, noise, decoded, encoded


def test_working_folder_loads_as_pipeline(working):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(working), local_files_only=True)
    assert pipe.tokenizer("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert pipe.unet.config.block_out_channels == (32, 64, 64) or list(pipe.unet.config.block_out_channels) == [32, 64, 64]


def test_text_encoder_reloads_identically(working):
    """The saved text encoder keys carry `text_model.`; a dropped prefix reloads as random weights."""
    from dreambooth.model.tiny import build_components

    _, _, text_encoder, _, _ = load_components(working)
    fresh = build_components("tiny", seed=0)["text_encoder"]
    saved = load_state_dict(working / "text_encoder" / "model.safetensors")[0]
    assert all(k.startswith("text_model.") for k in saved)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.no_grad():
        assert torch.equal(text_encoder(ids)[0], fresh(ids)[0])


def test_export_loads_with_from_single_file(working, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = export_single_file(working, tmp_path / "out.safetensors")
    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(working), local_files_only=True)
    unet, vae, text_encoder, _, _ = load_components(working)
    ours = _outputs(unet, vae, text_encoder)
    theirs = _outputs(pipe.unet.float(), pipe.vae.float(), pipe.text_encoder.float())
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_create_export_create_round_trip(working, tmp_path):
    out = export_single_file(working, tmp_path / "again.safetensors", metadata={"note": "x"})
    _, metadata = load_state_dict(out)
    assert metadata["note"] == "x" and "dreambooth_configs" in metadata
    again = tmp_path / "working2"
    create_working(out, again, progress=quiet)
    first, second = folder_weights(working), folder_weights(again)
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype
        assert first[key].dtype == torch.float32 or key.endswith("position_ids")
        assert (first[key] - second[key]).abs().max().item() <= 1e-6, key
    for name in ("unet", "vae"):
        import json
        a = json.loads((working / name / "config.json").read_text())
        b = json.loads((again / name / "config.json").read_text())
        assert {k: v for k, v in a.items() if not k.startswith("_")} == {k: v for k, v in b.items() if not k.startswith("_")}


def test_export_half_and_ckpt(working, tmp_path):
    half = export_single_file(working, tmp_path / "half.safetensors", half=True)
    tensors, _ = load_state_dict(half)
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    ckpt = export_single_file(working, tmp_path / "model.ckpt")
    tensors, metadata = load_state_dict(ckpt)
    assert "dreambooth_configs" in metadata
    assert detect_model_type(tensors) == "v1x"
    create_working(ckpt, tmp_path / "from_ckpt", progress=quiet)
    assert (tmp_path / "from_ckpt" / "model_index.json").is_file()


def test_export_from_live_modules_matches_folder(working, tmp_path):
    unet, vae, text_encoder, _, _ = load_components(working)
    a = load_state_dict(export_single_file({"unet": unet, "vae": vae, "text_encoder": text_encoder},
                                           tmp_path / "live.safetensors"))[0]
    b = load_state_dict(export_single_file(working, tmp_path / "folder.safetensors", unet=unet))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_create_from_diffusers_folder(working, tmp_path):
    info = create_working(working, tmp_path / "copy", progress=quiet)
    assert info["model_type"] == "v1x"
    first, second = folder_weights(working), folder_weights(tmp_path / "copy")
    assert all(torch.equal(first[k], second[k]) for k in first)


# --- bad input: a DreamboothError, and no working folder left behind ---------------------------------

def _assert_refused(source, tmp_path, words):
    target = tmp_path / "working"
    with pytest.raises(DreamboothError) as info:
        create_working(source, target, progress=quiet)
    assert not target.exists()
    assert words.lower() in str(info.value).lower(), str(info.value)
    return info.value


def test_missing_and_empty_source(tmp_path):
    _assert_refused(tmp_path / "nope.safetensors", tmp_path, "does not exist")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _assert_refused(tmp_path / "empty.safetensors", tmp_path, "empty")


def test_truncated_safetensors(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path / "cut.safetensors", tmp_path, "cut.safetensors")
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle at all" * 10)
    _assert_refused(tmp_path / "junk.ckpt", tmp_path, "junk.ckpt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        # what a hostile checkpoint does: run a callable on load (here: create a marker file)
        return (open, (self.marker, "w"))


def test_malicious_ckpt_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "evil": _Payload(str(marker))},
               tmp_path / "evil.ckpt")
    assert not marker.exists()
    error = _assert_refused(tmp_path / "evil.ckpt", tmp_path, "refused")
    assert "evil.ckpt" in str(error)
    assert not marker.exists()


def test_not_sd_and_sd2(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "lora.safetensors"))
    _assert_refused(tmp_path / "lora.safetensors", tmp_path, "not a Stable Diffusion checkpoint")
    # SD2.x is supported (tests/test_sd2.py); an SD2 text encoder without its VAE is refused
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "cond_stage_model.model.token_embedding.weight": torch.zeros(1)}, str(tmp_path / "sd2.safetensors"))
    _assert_refused(tmp_path / "sd2.safetensors", tmp_path, "use a full SD2.x checkpoint")
    (tmp_path / "notes.txt").write_text("hello")
    _assert_refused(tmp_path / "notes.txt", tmp_path, "notes.txt")


# --- SD1.5-sized mapping without allocating weights -----------------------------------------------

def test_sd15_key_layout_on_meta_device():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dreambooth.convert.diffusers_io import build_text_encoder

    unet_cfg = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8, "layers_per_block": 2,
                "block_out_channels": [320, 640, 1280, 1280],
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    vae_cfg = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
               "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    te_cfg = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
              "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder = build_text_encoder(te_cfg)
    ldm = diffusers_to_ldm(unet, vae, text_encoder)
    count = lambda prefix: sum(k.startswith(prefix) for k in ldm)  # noqa: E731
    assert count("model.diffusion_model.") == 686
    assert count("first_stage_model.") == 248
    te_keys = {k for k in ldm if k.startswith("cond_stage_model.") and not k.endswith("position_ids")}
    assert len(te_keys) + 1 == 197  # SD1 files also carry embeddings.position_ids
    for key, shape in [("model.diffusion_model.input_blocks.3.0.op.weight", (320, 320, 3, 3)),
                       ("model.diffusion_model.output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
                       ("model.diffusion_model.output_blocks.5.2.conv.weight", (1280, 1280, 3, 3)),
                       ("model.diffusion_model.output_blocks.11.1.proj_out.weight", (320, 320, 1, 1)),
                       ("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", (320 * 4, 768)),
                       ("first_stage_model.decoder.up.3.upsample.conv.weight", (512, 512, 3, 3)),
                       ("first_stage_model.encoder.mid.attn_1.q.weight", (512, 512, 1, 1)),
                       ("first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", (256, 128, 1, 1)),
                       ("cond_stage_model.transformer.text_model.final_layer_norm.weight", (768,))]:
        assert tuple(ldm[key].shape) == shape, key
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ldm
    configs = infer_configs(ldm, {})
    assert configs["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert configs["unet"]["down_block_types"] == unet_cfg["down_block_types"]
    assert configs["unet"]["up_block_types"] == unet_cfg["up_block_types"]
    assert configs["vae"]["block_out_channels"] == [128, 256, 512, 512]
    assert configs["text_encoder"]["num_attention_heads"] == 12 and configs["text_encoder"]["num_hidden_layers"] == 12
    unet_sd, vae_sd, te_sd = ldm_to_diffusers(ldm, configs)
    assert unet_sd.keys() == unet.state_dict().keys() and vae_sd.keys() == vae.state_dict().keys()
    assert te_sd["text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
