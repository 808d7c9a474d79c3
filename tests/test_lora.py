"""LoRA training on the tiny model: the kohya file diffusers loads, resume from a file, snapshots, merging."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import folder_weights, quick_config
from dreambooth.convert.lora_kohya import layer_delta, split_layers
from dreambooth.errors import DreamboothError
from dreambooth.monitor.metrics import read_metrics
from dreambooth.train.loop import Trainer
from dreambooth.train.lora import build_network
from dreambooth.train.lora_run import load_into
from dreambooth.train.snapshot import list_snapshots, load_snapshot


def lora_config(images, **overrides):
    values = dict(use_lora=True, lora_learning_rate=5e-3, lora_txt_learning_rate=1e-3, lora_unet_rank=4,
                  lora_unet_alpha=2, lora_txt_rank=2, num_train_epochs=2)
    values.update(overrides)
    return quick_config(images, **values)


def _probe(unet, text_encoder, seed=0):
    """The UNet's output on fixed inputs, conditioned by the text encoder's output."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    ids = torch.randint(0, 49406, (1, 77), generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), text_encoder(ids)[0]).sample


def _adapted_probe(model, lora_file):
    """Our adapter, rebuilt from the file on freshly loaded base modules."""
    from dreambooth.convert.diffusers_io import load_components

    unet, _, text_encoder, _, _ = load_components(model.working)
    tensors = load_file(str(lora_file))
    layers = split_layers(tensors)
    extended = any("resnets" in name for name in layers)
    with_text = any(name.startswith("lora_te_") for name in layers)
    first_unet = next(parts for name, parts in layers.items() if name.startswith("lora_unet_"))
    first_text = next((parts for name, parts in layers.items() if name.startswith("lora_te_")), None)
    network = build_network(unet, text_encoder if with_text else None, unet_rank=first_unet["down"].shape[0],
                            unet_alpha=1, extended=extended,
                            text_rank=first_text["down"].shape[0] if first_text else 0, text_alpha=1)
    assert load_into(network, tensors, lora_file.name) == 0
    base = _probe(unet, text_encoder)
    network.attach()
    return base, _probe(unet, text_encoder), (unet, text_encoder)


def test_lora_run_writes_kohya_file_and_leaves_the_base(tiny_model, one_image, models_root):
    before = folder_weights(tiny_model.working)
    cfg = lora_config(one_image, use_lora_extended=True, stop_text_encoder=1.0, gradient_checkpointing=True,
                      save_embedding_every=1)
    result = Trainer(tiny_model, cfg).run()
    assert [p.name for p in result.checkpoints] == ["tiny_1.safetensors", "tiny_2.safetensors"]
    assert all(p.parent == models_root / "Lora" for p in result.checkpoints)
    after = folder_weights(tiny_model.working)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    lora_file = result.checkpoints[-1]
    tensors = load_file(str(lora_file))
    names = {key.split(".")[0] for key in tensors}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in names  # extended: the 3x3 convolutions
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert all(key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for key in tensors)
    # every adapter trained (lora_up starts at zero), through gradient checkpointing too
    assert all(tensors[f"{name}.lora_up.weight"].abs().sum() > 0 for name in names)
    assert float(tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 2.0
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape[0] == 2

    with safe_open(str(lora_file), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    assert meta["ss_steps"] == "2" and meta["ss_resolution"] == "(64, 64)"
    assert meta["ss_sd_model_name"] == "tiny.safetensors" and len(meta["ss_new_sd_model_hash"]) == 64
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2"}
    assert meta["dreambooth_tab_version"] and meta["dreambooth_tab_text_rank"] == "2"

    # the snapshot: the adapters and their optimizer state, nothing of the UNet
    snapshot = list_snapshots(tiny_model.snapshots)[-1]
    assert sorted(p.name for p in snapshot.glob("*.safetensors")) == ["lora.safetensors"]
    parts = load_snapshot(snapshot)
    assert set(parts["weights"]["lora"]) == set(tensors)
    adapter_params = sum(1 for key in tensors if not key.endswith(".alpha"))
    assert len(parts["optimizer"]["state"]) == adapter_params


def test_diffusers_load_lora_weights_matches_our_adapter(tiny_model, one_image, tiny_checkpoint):
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        pytest.skip("diffusers' load_lora_weights needs peft and transformers >= 4.34 (this stack: the WebUI's 4.30)")
    from diffusers import StableDiffusionPipeline

    cfg = lora_config(one_image, use_lora_extended=True, stop_text_encoder=1.0, num_train_epochs=3)
    lora_file = Trainer(tiny_model, cfg).run().checkpoints[-1]
    base, ours, _ = _adapted_probe(tiny_model, lora_file)
    assert (ours - base).abs().max() > 1e-3  # the LoRA really changes the output

    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_model.working), safety_checker=None,
                                                       requires_safety_checker=False, local_files_only=True)
    pipeline.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    theirs = _probe(pipeline.unet, pipeline.text_encoder)
    assert (theirs - ours).abs().max() <= 1e-4


def test_resume_from_a_lora_file_continues_the_loss(tiny_model, one_image, models_root):
    first = Trainer(tiny_model, lora_config(one_image, num_train_epochs=8)).run()
    lora_file = first.checkpoints[-1]

    def run(**overrides):
        cfg = lora_config(one_image, num_train_epochs=4, seed=7, **overrides)
        result = Trainer(tiny_model, cfg).run()
        return result, [row["loss"] for row in read_metrics(tiny_model.logging)]

    fresh, fresh_losses = run()
    continued, continued_losses = run(lora_model_name=lora_file.name)
    # same seed: the same images, noise and timesteps step for step; only the starting adapter differs
    assert sum(continued_losses) < 0.8 * sum(fresh_losses), (continued_losses, fresh_losses)
    assert continued.revision == fresh.revision + 4 == 8 + 4 + 4


def test_lora_file_with_another_rank_names_the_field(tiny_model, one_image):
    lora_file = Trainer(tiny_model, lora_config(one_image, num_train_epochs=1)).run().checkpoints[-1]
    with pytest.raises(DreamboothError) as error:
        Trainer(tiny_model, lora_config(one_image, lora_unet_rank=8, lora_model_name=lora_file.name)).run()
    assert error.value.field == "lora_unet_rank" and "(4)" in str(error.value)
    for outside in ("../tiny/db_config.json", "/etc/passwd", "nothing-here"):
        with pytest.raises(DreamboothError) as error:
            Trainer(tiny_model, lora_config(one_image, lora_model_name=outside)).run()
        assert error.value.field == "lora_model_name"


def test_resume_snapshot_of_a_lora_run(tiny_model, one_image):
    """1 epoch, then --resume for a 2nd: the same adapters as 2 straight epochs (same seed)."""
    straight = load_file(str(Trainer(tiny_model, lora_config(one_image)).run().checkpoints[-1]))
    Trainer(tiny_model, lora_config(one_image, num_train_epochs=1)).run()
    with pytest.raises(DreamboothError) as error:  # a LoRA snapshot never resumes a full fine-tune
        Trainer(tiny_model, quick_config(one_image), resume=True).run()
    assert error.value.field == "use_lora"
    resumed = Trainer(tiny_model, lora_config(one_image), resume=True).run()
    assert resumed.steps == 2 and resumed.checkpoints[-1].name == "tiny_4.safetensors"  # revision 2 + 2
    again = load_file(str(resumed.checkpoints[-1]))
    assert straight.keys() == again.keys()
    assert all(torch.allclose(straight[k], again[k], atol=1e-6) for k in straight)
