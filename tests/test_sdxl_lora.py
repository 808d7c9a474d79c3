"""SDXL LoRA on the tiny SDXL preset: the kohya SDXL layout (LDM UNet names, lora_te1/lora_te2), diffusers'
own load_lora_weights giving our adapted model's outputs, Generate Ckpt's merge, and continuing from a LoRA
file (today's names and the older ones) — real models and files, offline."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import quick_config
from dreambooth.convert.checkpoint_io import load_state_dict
from dreambooth.monitor.metrics import read_metrics
from dreambooth.service.operations import create_model, generate_ckpt
from dreambooth.train.loop import Trainer

quiet = lambda message: None  # noqa: E731
UNET = "model.diffusion_model."
CLIP_L = "conditioner.embedders.0.transformer."


def lora_config(images, **overrides):
    concepts = [{"instance_data_dir": str(images), "instance_prompt": "a photo of sks toy", "n_save_sample": 0}]
    values = dict(use_lora=True, lora_learning_rate=1e-2, lora_txt_learning_rate=1e-2, lora_unet_rank=4,
                  lora_unet_alpha=2, lora_txt_rank=2, num_train_epochs=2, concepts_list=concepts,
                  save_state_after=False)
    values.update(overrides)
    return quick_config(images, **values)


@dataclass
class Trained:
    model: object
    trainer: Trainer
    lora_file: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sdxl_checkpoint, demo_images):
    """One SDXL LoRA run with adapters on the UNet (its ResNet convolutions too) and on both text encoders;
    the trainer keeps its adapted modules in memory. Its own models root for the whole module."""
    images = tmp_path_factory.mktemp("xl_one_image")
    first = sorted(demo_images.glob("*.png"))[0]
    (images / first.name).write_bytes(first.read_bytes())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path_factory.mktemp("xl_lora_models")))
        model = create_model("xl", sdxl_checkpoint, progress=quiet)
        cfg = lora_config(images, use_lora_extended=True, stop_text_encoder=1.0, sdxl_train_text_encoder=True,
                          sdxl_train_text_encoder_2=True, num_train_epochs=3, src=str(sdxl_checkpoint))
        trainer = Trainer(model, cfg)
        yield Trained(model, trainer, trainer.run().checkpoints[-1])


def layer_names(path) -> set[str]:
    return {key.split(".")[0] for key in load_file(str(path))}


def test_sdxl_lora_file_has_the_kohya_sdxl_layout(trained, sdxl_checkpoint):
    tensors = load_file(str(trained.lora_file))
    names = {key.split(".")[0] for key in tensors}
    assert {name.split("_")[1] for name in names} == {"unet", "te1", "te2"}
    assert all(f"{name}.{part}" in tensors for name in names for part in ("lora_down.weight", "lora_up.weight", "alpha"))
    assert len(tensors) == 3 * len(names)
    untrained = {name for name in names if not tensors[f"{name}.lora_up.weight"].any()}  # lora_up starts at 0
    # every adapter trained but those of CLIP-L's last layer: SDXL conditions on its penultimate layer
    assert untrained == {name for name in names if name.startswith("lora_te1_text_model_encoder_layers_4_")}

    # UNet layers are named by the module paths of the single file the WebUI loads, dots as underscores
    ckpt = load_state_dict(sdxl_checkpoint)[0]
    ldm = {key[len(UNET):-len(".weight")].replace(".", "_") for key in ckpt if key.startswith(UNET)}
    unet = {name.removeprefix("lora_unet_") for name in names if name.startswith("lora_unet_")}
    assert unet <= ldm
    assert {"input_blocks_4_1_transformer_blocks_0_attn1_to_q", "middle_block_1_transformer_blocks_1_ff_net_2",
            "output_blocks_3_1_proj_in",
            "input_blocks_1_0_in_layers_2", "input_blocks_3_0_op", "output_blocks_2_2_conv"} <= unet  # + extended
    assert not any("down_blocks" in name or "up_blocks" in name for name in unet)
    clip_l = {key[len(CLIP_L):-len(".weight")].replace(".", "_") for key in ckpt if key.startswith(CLIP_L)}
    te1 = {name.removeprefix("lora_te1_") for name in names if name.startswith("lora_te1_")}
    assert te1 <= clip_l and "text_model_encoder_layers_4_mlp_fc2" in te1 and len(te1) == 5 * 6
    te2 = {name.removeprefix("lora_te2_") for name in names if name.startswith("lora_te2_")}
    assert "text_model_encoder_layers_2_self_attn_out_proj" in te2 and len(te2) == 3 * 6  # transformers' names
    assert tensors["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape[0] == 2  # lora_txt_rank
    assert float(tensors["lora_unet_input_blocks_4_1_proj_in.alpha"]) == 2.0

    with safe_open(str(trained.lora_file), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["ss_network_dim"] == "4" and meta["ss_sd_model_name"] == "tiny-sdxl.safetensors"


def test_text_adapters_follow_the_sdxl_encoder_switches(sdxl_checkpoint, models_root, one_image):
    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    runs = {(True, False): {"unet", "te1"}, (False, True): {"unet", "te2"}}
    for (clip_l, big_g), prefixes in runs.items():
        cfg = lora_config(one_image, num_train_epochs=1, stop_text_encoder=1.0, sdxl_train_text_encoder=clip_l,
                          sdxl_train_text_encoder_2=big_g)
        lora_file = Trainer(model, cfg).run().checkpoints[-1]
        assert {name.split("_")[1] for name in layer_names(lora_file)} == prefixes
    frozen = Trainer(model, lora_config(one_image, num_train_epochs=1, stop_text_encoder=0)).run()
    assert {name.split("_")[1] for name in layer_names(frozen.checkpoints[-1])} == {"unet"}


def test_diffusers_load_lora_weights_matches_our_adapted_sdxl(trained):
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        pytest.skip("diffusers' load_lora_weights needs peft and transformers >= 4.34 (this stack: the WebUI's 4.30)")
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(trained.model.working), local_files_only=True)
    pipe.load_lora_weights(str(trained.lora_file.parent), weight_name=trained.lora_file.name)
    models, network = trained.trainer.models, trained.trainer.lora.network
    ours = {"unet": models.unet, "text_encoder": models.text_encoder.text_encoder,
            "text_encoder_2": models.text_encoder.text_encoder_2}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49406, (1, 77), generator=generator)
    sample, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 96, generator=generator)
    added = {"text_embeds": torch.randn(1, 48, generator=generator),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}

    def outputs(modules) -> dict:
        with torch.no_grad():
            first = modules["text_encoder"](ids, output_hidden_states=True)
            second = modules["text_encoder_2"](ids, output_hidden_states=True)
            return {"unet": modules["unet"](sample, 500, context, added_cond_kwargs=added).sample,
                    "text_encoder": first.last_hidden_state, "text_encoder_penultimate": first.hidden_states[-2],
                    "text_encoder_2": second.last_hidden_state, "pooled": second.text_embeds}

    for module in list(ours.values()) + [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]:
        module.eval()
    adapted = outputs(ours)
    network.detach()
    try:
        base = outputs(ours)
    finally:
        network.attach()
    theirs = outputs({"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2})
    for name, value in adapted.items():
        assert (value - base[name]).abs().max() > 1e-3, name  # the LoRA really changes this output
        assert (theirs[name] - value).abs().max() <= 1e-4, name


def _delta(tensors: dict, name: str, shape) -> torch.Tensor:
    """alpha / rank × up @ down of one layer, written out here rather than taken from the program."""
    down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
    rank = down.shape[0]
    return (float(tensors[f"{name}.alpha"]) / rank * (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1))
            ).reshape(shape)


def _check_merge(base: dict, merged: dict, tensors: dict, to_name, weight: float) -> int:
    """Every weight whose layer the file has is base + weight × delta, all others unchanged; returns how
    many were merged."""
    count = 0
    for key, value in base.items():
        name = to_name(key) if key.endswith(".weight") else None
        if name is not None and f"{name}.lora_down.weight" in tensors:
            expected = value + weight * _delta(tensors, name, value.shape)
            assert torch.allclose(merged[key], expected, atol=1e-6), key
            count += 1
        else:
            assert torch.equal(merged[key], value), key
    return count


def test_generate_ckpt_merges_the_sdxl_lora_at_half_weight(trained, sdxl_checkpoint, tmp_path):
    out = generate_ckpt("xl", overrides={"lora_model_name": trained.lora_file.name, "lora_weight": 0.5})
    assert out.name == "xl_3_lora.safetensors"
    tensors = load_file(str(trained.lora_file))
    counts = {prefix: len({key.split(".")[0] for key in tensors if key.startswith(prefix + "_")})
              for prefix in ("lora_unet", "lora_te1", "lora_te2")}
    base, merged = load_state_dict(sdxl_checkpoint)[0], load_state_dict(out)[0]
    assert merged.keys() == base.keys()
    # the UNet and CLIP-L straight from the single files: a layer's name is the key's module path
    unet = lambda key: f"lora_unet_{key[len(UNET):-len('.weight')].replace('.', '_')}"  # noqa: E731
    clip_l = lambda key: f"lora_te1_{key[len(CLIP_L):-len('.weight')].replace('.', '_')}"  # noqa: E731
    for prefix, to_name, counted in ((UNET, unet, "lora_unet"), (CLIP_L, clip_l, "lora_te1")):
        part = lambda state: {k: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        assert _check_merge(part(base), part(merged), tensors, to_name, 0.5) == counts[counted]
    # OpenCLIP-bigG is stored with joint q/k/v in the single file: compared in transformers' names after Create
    again = create_model("merged", out, progress=quiet)
    big_g = lambda folder: load_state_dict(folder / "text_encoder_2" / "model.safetensors")[0]  # noqa: E731
    te2 = lambda key: f"lora_te2_{key[:-len('.weight')].replace('.', '_')}"  # noqa: E731
    assert _check_merge(big_g(trained.model.working), big_g(again.working), tensors, te2, 0.5) == counts["lora_te2"]


def _older_names(lora_file: Path, working: Path, sdxl_checkpoint, out: Path) -> Path:
    """The file as this program wrote SDXL LoRAs before: UNet layers by their diffusers paths (found here by
    matching each single-file UNet tensor with the working folder's equal one), text encoders as
    lora_te_text_model_text_encoder[_2]_text_model_… (as under transformers 4)"""
    def digest(tensor):
        return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()

    diffusers_unet = load_state_dict(working / "unet" / "diffusion_pytorch_model.safetensors")[0]
    by_value = {digest(value): key for key, value in diffusers_unet.items()}
    older = {}
    for key, value in load_state_dict(sdxl_checkpoint)[0].items():
        if key.startswith(UNET) and key.endswith(".weight"):
            module = lambda k: k[:-len(".weight")].replace(".", "_")  # noqa: E731
            older[f"lora_unet_{module(key[len(UNET):])}"] = f"lora_unet_{module(by_value[digest(value)])}"
    renamed = {}
    for key, value in load_file(str(lora_file)).items():
        name, _, part = key.partition(".")
        name = older.get(name, name).replace("lora_te1_", "lora_te_text_model_text_encoder_", 1)
        renamed[f"{name.replace('lora_te2_', 'lora_te_text_model_text_encoder_2_', 1)}.{part}"] = value
    assert not any(name.startswith(("lora_te1", "lora_te2", "lora_unet_input_blocks")) for name in renamed)
    save_file(renamed, str(out))
    return out


def test_older_sdxl_lora_names_still_merge(trained, sdxl_checkpoint):
    older = _older_names(trained.lora_file, trained.model.working, sdxl_checkpoint,
                         trained.lora_file.with_name("older.safetensors"))
    assert len(layer_names(older) & layer_names(trained.lora_file)) == 0  # not one name in common
    today = generate_ckpt("xl", overrides={"lora_model_name": trained.lora_file.name, "lora_weight": 0.7})
    today_tensors = load_state_dict(today)[0]
    before = generate_ckpt("xl", overrides={"lora_model_name": older.name, "lora_weight": 0.7})
    assert before == today  # the same output name: the same export
    assert all(torch.equal(value, today_tensors[key]) for key, value in load_state_dict(before)[0].items())


def test_resume_from_an_sdxl_lora_file_continues(sdxl_checkpoint, models_root, one_image):
    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    # (on the tiny SDXL UNet the attention adapters alone barely move the loss: the convolutions too)
    kind = dict(use_lora_extended=True, stop_text_encoder=1.0, sdxl_train_text_encoder=True,
                sdxl_train_text_encoder_2=False)
    first = lora_config(one_image, num_train_epochs=10, lora_learning_rate=3e-2, **kind)
    lora_file = Trainer(model, first).run().checkpoints[-1]
    assert {name.split("_")[1] for name in layer_names(lora_file)} == {"unet", "te1"}  # the SDXL layout

    def losses(**overrides):
        Trainer(model, lora_config(one_image, num_train_epochs=4, seed=7, **kind, **overrides)).run()
        return [row["loss"] for row in read_metrics(model.logging)]

    fresh = losses()
    continued = losses(lora_model_name=lora_file.name)
    # same seed: the same images, noise and timesteps; only the adapters loaded from the file differ, and they
    # have already learnt this image: every step's loss is lower
    assert all(c < f for c, f in zip(continued, fresh)), (continued, fresh)
    assert sum(continued) < 0.9 * sum(fresh), (continued, fresh)
    older = _older_names(lora_file, model.working, sdxl_checkpoint, lora_file.with_name("older.safetensors"))
    assert losses(lora_model_name=older.name) == continued  # the older names load the very same adapters
