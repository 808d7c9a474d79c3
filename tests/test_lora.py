"""LoRA training on the tiny model: the kohya file diffusers loads, resume from a file, snapshots, merging."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import folder_weights, quick_config
from dreambooth.convert.lora_kohya import split_layers
from dreambooth.errors import DreamboothError
from dreambooth.monitor.metrics import read_metrics
from dreambooth.train.loop import Trainer
from dreambooth.train.lora import build_network
from dreambooth.train.lora_run import load_into
from dreambooth.train.snapshot import list_snapshots, load_snapshot


def lora_config(images, **overrides):
    """Quick LoRA settings; no preview at the end unless a test's concepts ask for one (CPU time)."""
    concepts = [{"instance_data_dir": str(images), "instance_prompt": "a photo of sks toy", "n_save_sample": 0}]
    values = dict(use_lora=True, lora_learning_rate=5e-3, lora_txt_learning_rate=1e-3, lora_unet_rank=4,
                  lora_unet_alpha=2, lora_txt_rank=2, num_train_epochs=2, concepts_list=concepts)
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


def test_lora_run_writes_kohya_file_and_leaves_the_base(tiny_model, one_image, models_root, tiny_checkpoint):
    before = folder_weights(tiny_model.working)
    cfg = lora_config(one_image, use_lora_extended=True, stop_text_encoder=1.0, gradient_checkpointing=True,
                      save_embedding_every=1, src=str(tiny_checkpoint))
    trainer = Trainer(tiny_model, cfg)
    result = trainer.run()
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [5e-3, 1e-3]  # the LoRA rates
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
    first = Trainer(tiny_model, lora_config(one_image, num_train_epochs=8, lora_learning_rate=1e-2)).run()
    lora_file = first.checkpoints[-1]

    def losses(**overrides):
        Trainer(tiny_model, lora_config(one_image, num_train_epochs=4, seed=7, **overrides)).run()
        return [row["loss"] for row in read_metrics(tiny_model.logging)]

    fresh = losses()
    continued = losses(lora_model_name=lora_file.name)
    # Same seed: the same adapter initialisation, images, noise and timesteps step for step; only the
    # adapter loaded from the file differs, and it has already learnt this image: every step's loss is lower.
    assert all(c < f for c, f in zip(continued, fresh)), (continued, fresh)
    assert sum(continued) < 0.97 * sum(fresh), (continued, fresh)


def test_lora_file_with_another_rank_names_the_field(tiny_model, one_image):
    lora_file = Trainer(tiny_model, lora_config(one_image, num_train_epochs=1)).run().checkpoints[-1]
    with pytest.raises(DreamboothError) as error:
        Trainer(tiny_model, lora_config(one_image, lora_unet_rank=8, lora_model_name=lora_file.name)).run()
    assert error.value.field == "lora_unet_rank" and "(4)" in str(error.value)
    from dreambooth.model.lora_files import resolve_lora_file

    assert resolve_lora_file("tiny_1", tiny_model) == lora_file.resolve()
    stray = lora_file.parent.parent / "outside.safetensors"  # a real LoRA file, but not in a Lora folder
    stray.write_bytes(lora_file.read_bytes())
    for name in ("../outside", str(stray), "/etc/passwd", "nothing-here", "a\x00b", ""):
        with pytest.raises(DreamboothError) as error:  # only files inside the Lora folders, named relatively
            resolve_lora_file(name, tiny_model)
        assert error.value.field == "lora_model_name"


def test_resume_snapshot_of_a_lora_run(tiny_model, one_image):
    """1 epoch, then --resume for a 2nd: the same adapters as 2 straight epochs (same seed)."""
    import shutil

    Trainer(tiny_model, lora_config(one_image, num_train_epochs=1)).run()
    with pytest.raises(DreamboothError) as error:  # a LoRA snapshot never resumes a full fine-tune
        Trainer(tiny_model, quick_config(one_image), resume=True).run()
    assert error.value.field == "use_lora"
    resumed = Trainer(tiny_model, lora_config(one_image), resume=True).run()
    assert resumed.steps == 2 and resumed.checkpoints[-1].name == "tiny_2.safetensors"
    again = load_file(str(resumed.checkpoints[-1]))
    shutil.rmtree(tiny_model.snapshots)
    straight = load_file(str(Trainer(tiny_model, lora_config(one_image)).run().checkpoints[-1]))
    assert straight.keys() == again.keys()
    assert all(torch.allclose(straight[k], again[k], atol=1e-6) for k in straight)


def _expected_merge(base: dict, tensors: dict, prefix: str, weight: float) -> dict:
    """base + weight × alpha / rank × up @ down for every layer of the file, written out independently."""
    expected = dict(base)
    for key, value in base.items():
        name = f"{prefix}_{key[:-len('.weight')].replace('.', '_')}" if key.endswith(".weight") else None
        if name is None or f"{name}.lora_down.weight" not in tensors:
            continue
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        rank = down.shape[0]
        product = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
        expected[key] = value + weight * float(tensors[f"{name}.alpha"]) / rank * product.reshape(value.shape)
    return expected


def test_generate_ckpt_merges_the_chosen_lora_at_its_weight(tiny_model, one_image, models_root):
    from dreambooth.service.operations import create_model, generate_ckpt

    cfg = lora_config(one_image, num_train_epochs=1, use_lora_extended=True, stop_text_encoder=1.0)
    lora_file = Trainer(tiny_model, cfg).run().checkpoints[-1]
    tensors = load_file(str(lora_file))
    # the Lora Model chosen on screen (or `ckpt --set`), merged at 0.5, into the model's subfolder
    out = generate_ckpt("tiny", subdir=True, overrides={"lora_model_name": lora_file.stem, "lora_weight": 0.5})
    assert out == models_root / "Stable-diffusion" / "tiny" / "tiny_1_lora.safetensors"

    merged = create_model("merged", out, progress=lambda message: None)  # read back through our own loader
    base, got = folder_weights(tiny_model.working), folder_weights(merged.working)
    for component, prefix in (("unet", "lora_unet"), ("text_encoder", "lora_te")):
        part = {k.split("/", 1)[1]: v for k, v in base.items() if k.startswith(component + "/")}
        if component == "text_encoder":
            part = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in part.items()}
        expected = _expected_merge(part, tensors, prefix, 0.5)
        changed = [k for k in expected if not torch.equal(expected[k], part[k])]
        assert len(changed) == len({key.split(".")[0] for key in tensors if key.startswith(prefix + "_")})
        for key in changed:
            stored = next(v for k, v in got.items() if k.startswith(component + "/") and k.endswith(key.removeprefix("text_model.")))
            assert torch.allclose(stored, expected[key], atol=1e-6), key

    half = generate_ckpt("tiny", half=True, overrides={"lora_model_name": lora_file.name})
    assert half.name == "tiny_1_lora_half.safetensors" and half.parent == models_root / "Stable-diffusion"
    with safe_open(str(half), framework="pt") as handle:
        key = next(k for k in handle.keys() if k.startswith("model.diffusion_model."))
        assert handle.get_tensor(key).dtype == torch.float16
    with pytest.raises(DreamboothError) as error:
        generate_ckpt("tiny", overrides={"lora_model_name": "../../dreambooth/tiny/db_config"})
    assert error.value.field == "lora_model_name"


def test_older_extension_lora_keys_are_read():
    from dreambooth.config import config_from_dict

    older = {"use_lora": True, "use_lora_extended": True, "lora_learning_rate": 2e-4, "lora_txt_learning_rate": 1e-4,
             "lora_unet_rank": 8, "lora_txt_rank": 6, "lora_weight": 0.6, "lora_model_name": "mine_500",
             "save_lora_for_extra_net": False}
    cfg, warnings = config_from_dict(older)
    assert warnings == []
    assert {key: getattr(cfg, key) for key in older} == older


def test_class_images_from_the_base_previews_from_the_adapter(tiny_model, one_image):
    import numpy as np
    from PIL import Image

    lora_file = Trainer(tiny_model, lora_config(one_image, lora_learning_rate=5e-2)).run().checkpoints[-1]
    concept = {"instance_data_dir": str(one_image), "instance_prompt": "a photo of sks toy", "class_prompt": "a toy",
               "num_class_images_per": 1, "class_infer_steps": 2, "n_save_sample": 1, "sample_seed": 3,
               "save_infer_steps": 2}

    def run(**overrides):
        """(class image, preview) of a 1-epoch LoRA run with prior preservation."""
        result = Trainer(tiny_model, lora_config(one_image, num_train_epochs=1, concepts_list=[concept],
                                                 **overrides)).run()
        classes = sorted(tiny_model.classifiers(0).glob("*.png"))
        pixels = [np.asarray(Image.open(path), dtype=np.float32) for path in (classes[0], result.samples[-1])]
        for path in classes:  # the next run generates its own
            path.unlink()
        return pixels

    loaded_class, loaded_preview = run(lora_model_name=lora_file.name)   # starts from a trained adapter
    base_class, base_preview = run(lora_learning_rate=1e-12)             # an adapter that stays ~zero
    assert np.array_equal(loaded_class, base_class)  # class images: the base model, before the adapters
    assert np.abs(loaded_preview - base_preview).mean() > 1.0  # previews: the adapted model


def test_tab_and_rest_choose_and_merge_a_lora(tiny_model, one_image, models_root):
    import shutil

    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dreambooth.api import register_routes
    from dreambooth.ui import handlers
    from dreambooth.ui.tab import Tab

    assert handlers.lora_choices("tiny") == [""]
    cfg = lora_config(one_image, num_train_epochs=1, save_lora_for_extra_net=False)
    lora_file = Trainer(tiny_model, cfg).run().checkpoints[-1]
    assert lora_file == tiny_model.loras / "tiny_1.safetensors"  # the model's own folder when asked
    shared = models_root / "Lora" / "people"
    shared.mkdir(parents=True)
    shutil.copy(lora_file, shared / "anna.safetensors")
    leftover = models_root / "Lora" / ".tiny_9.safetensors.k3j2.tmp"  # a killed save's temporary file
    leftover.write_bytes(b"")
    assert handlers.lora_choices("tiny") == ["", "people/anna.safetensors", "tiny_1.safetensors"]

    tab = Tab()
    tab.build()
    selector = tab.widgets["lora_model_name"]
    assert isinstance(selector, gr.Dropdown)

    screen = {"lora_model_name": "people/anna", "lora_weight": 0.25, "use_subdir": True}
    message = handlers.generate_ckpt("tiny", screen)
    assert str(models_root / "Stable-diffusion" / "tiny" / "tiny_1_lora.safetensors") in message
    app = FastAPI()
    register_routes(app)
    client = TestClient(app)
    answer = client.post("/dreambooth-tab/v1/checkpoint", json={"model_name": "tiny", "params": {
        "lora_model_name": "tiny_1.safetensors", "lora_weight": 1.0}})
    assert answer.status_code == 200 and answer.json()["path"].endswith("tiny_1_lora.safetensors")
    answer = client.post("/dreambooth-tab/v1/checkpoint", json={"model_name": "tiny", "params": {
        "lora_model_name": "../../Stable-diffusion/tiny_1_lora"}})
    assert answer.status_code == 400 and answer.json()["field"] == "lora_model_name"

    from dreambooth.service.operations import train_model

    train_model("tiny", cfg)  # the next run of this model removes its leftover in the Lora folder
    assert not leftover.exists()


def test_dropout_only_while_training(tiny_parts):
    unet = tiny_parts[0]
    layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    plain = build_network(unet, None, unet_rank=4, unet_alpha=4, extended=False, seed=1)
    dropped = build_network(unet, None, unet_rank=4, unet_alpha=4, extended=False, dropout=0.5, seed=1)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    torch.nn.init.normal_(plain[name].lora_up.weight)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, layer.in_features)
    torch.manual_seed(0)
    first, second = dropped[name](x), dropped[name](x)
    assert not torch.allclose(first, second) and not torch.allclose(first, plain[name](x))  # dropout is on
    with torch.no_grad():  # previews and caches: no dropout, the same change as without it
        assert torch.equal(dropped[name](x), plain[name](x))


def test_cli_trains_a_lora_and_merges_it(tiny_model, one_image, models_root, capsys):
    from dreambooth.cli import main

    concepts = f'[{{"instance_data_dir": "{one_image}", "instance_prompt": "sks toy", "n_save_sample": 0}}]'
    assert main(["train", "tiny", "--set", "use_lora=true", "--set", "num_train_epochs=1", "--set", "resolution=64",
                 "--set", "mixed_precision=no", "--set", "lora_unet_rank=2", "--set", f"concepts_list={concepts}"]) == 0
    assert f"checkpoint: {models_root / 'Lora' / 'tiny_1.safetensors'}" in capsys.readouterr().out
    assert main(["ckpt", "tiny"]) == 0  # use_lora, no Lora Model chosen: the model's newest LoRA
    assert capsys.readouterr().out.strip().endswith("tiny_1_lora.safetensors")
    assert main(["ckpt", "tiny", "--set", "lora_model_name=missing"]) == 2
    assert "lora_model_name" in capsys.readouterr().err


def test_generate_samples_uses_the_chosen_lora_at_its_weight(tiny_model, one_image, models_root):
    import numpy as np
    from PIL import Image

    from dreambooth.service.operations import generate_samples

    cfg = lora_config(one_image, num_train_epochs=2, stop_text_encoder=1.0, lora_learning_rate=5e-2)
    lora_file = Trainer(tiny_model, cfg).run().checkpoints[-1]
    cfg.concepts_list = [dict(cfg.concepts_list[0], n_save_sample=1, sample_seed=3, save_infer_steps=4)]

    def sample(**lora):  # the values on screen: Lora Model and weight, nothing saved
        cfg.use_lora = False
        cfg.lora_model_name, cfg.lora_weight = lora.get("name", ""), lora.get("weight", 1.0)
        [path] = [p for p in generate_samples("tiny", cfg) if p.suffix == ".png"]
        return path, np.asarray(Image.open(path)).astype(np.int16)

    base_path, base = sample()
    zero_path, at_zero = sample(name=lora_file.name, weight=0.0)
    full_path, at_one = sample(name=lora_file.name, weight=1.0)
    assert "-manual-lora" in zero_path.name and "-lora" not in base_path.name
    assert np.array_equal(base, at_zero)  # weight 0 adds nothing: the base's own sample
    assert np.abs(at_one - base).mean() > 0.5  # the LoRA's change shows in the image
    with pytest.raises(DreamboothError) as error:
        sample(name="../../dreambooth/tiny/db_config")
    assert error.value.field == "lora_model_name"
