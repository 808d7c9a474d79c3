"""SDXL on the tiny SDXL-shaped preset: the single-file layout, Create (refiner and inpainting refused),
Generate Ckpt round trips that diffusers' own SDXL loader reads back, the size/crop conditioning per bucket,
and training (loss falls, per-encoder text-encoder training, previews) — offline, no mocks."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import quick_config
from data_helpers import pairs_for, write_image
from dreambooth.convert.checkpoint_io import load_state_dict
from dreambooth.convert.create import create_working
from dreambooth.errors import DreamboothError

quiet = lambda message: None  # noqa: E731
COMPONENTS = (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"),
              ("text_encoder_2", "model"))


def sdxl_weights(folder) -> dict:
    out = {}
    for name, file in COMPONENTS:
        out.update({f"{name}/{k}": v for k, v in load_state_dict(folder / name / f"{file}.safetensors")[0].items()})
    return out


def test_single_file_layout_is_sdxl(sdxl_checkpoint):
    tensors, metadata = load_state_dict(sdxl_checkpoint)
    prefixes = {".".join(k.split(".")[:3]) for k in tensors if k.startswith("conditioner.")}
    assert prefixes == {"conditioner.embedders.0", "conditioner.embedders.1"}
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in tensors
    openclip = "conditioner.embedders.1.model."
    # bigG-style: joint q/k/v, projection stored (hidden, projection) — the transpose of the Linear weight
    assert tensors[openclip + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 64, 64)
    assert tensors[openclip + "text_projection"].shape == (64, 48)
    assert openclip + "logit_scale" in tensors
    assert tensors["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 6 * 8 + 48  # size/crop + pooled
    assert not any(k.startswith("cond_stage_model.") for k in tensors)
    assert "addition_embed_type" in json.loads(metadata["dreambooth_configs"])["unet"]


def test_create_detects_sdxl(sdxl_checkpoint, models_root, tmp_path):
    from dreambooth.convert.diffusers_io import load_components
    from dreambooth.service.operations import create_model, load_params

    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    cfg, _ = load_params("xl")
    assert cfg.model_type == "SDXL" and cfg.resolution == 1024
    index = json.loads((model.working / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    unet, _, text_encoder, tokenizer, scheduler = load_components(model.working)
    assert unet.config.addition_embed_type == "text_time" and unet.config.transformer_layers_per_block == [1, 1, 2]
    assert text_encoder.text_encoder.config.hidden_act == "quick_gelu"
    assert text_encoder.text_encoder_2.config.hidden_act == "gelu"
    assert text_encoder.text_encoder_2.config.num_hidden_layers == 3  # every block: SDXL picks its layer at run time
    assert tokenizer.tokenizer_2.pad_token_id == 0 and tokenizer.tokenizer.pad_token_id == 49407
    assert scheduler["prediction_type"] == "epsilon"
    # an SDXL diffusers folder is a source too
    copy = create_working(model.working, tmp_path / "copy", progress=quiet)
    assert copy["model_type"] == "SDXL"
    first, second = sdxl_weights(model.working), sdxl_weights(tmp_path / "copy")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _variant(source, tmp_path, name, change) -> object:
    from safetensors.torch import save_file

    tensors, _ = load_state_dict(source)
    tensors = change(tensors)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def test_refiner_inpainting_and_incomplete_files_are_refused(sdxl_checkpoint, tmp_path):
    def refiner(tensors):  # the refiner: one OpenCLIP encoder, as embedders.0.model
        return {k.replace("conditioner.embedders.1.model.", "conditioner.embedders.0.model."): v
                for k, v in tensors.items() if not k.startswith("conditioner.embedders.0.")}

    def inpainting(tensors):  # 4 latent + 1 mask + 4 masked-image channels
        key = "model.diffusion_model.input_blocks.0.0.weight"
        weight = tensors[key]
        tensors[key] = torch.cat([weight, weight, weight[:, :1]], dim=1)
        return tensors

    def no_openclip(tensors):
        return {k: v for k, v in tensors.items() if not k.startswith("conditioner.embedders.1.")}

    for name, change, words in (("refiner", refiner, "refiner"), ("inpaint", inpainting, "inpainting"),
                                ("half", no_openclip, "OpenCLIP-bigG")):
        with pytest.raises(DreamboothError) as error:
            create_working(_variant(sdxl_checkpoint, tmp_path, name, change), tmp_path / name, progress=quiet)
        assert words in str(error.value) and "SDXL base" in str(error.value) and error.value.field == "source"
        assert not (tmp_path / name).exists()
    with pytest.raises(DreamboothError) as error:
        create_working(sdxl_checkpoint, tmp_path / "wrong", progress=quiet, model_type="v1x")
    assert "an SDXL model" in str(error.value)


def _weights_free_config(working, folder):
    """The working folder's configs and tokenizers without any weights: whatever diffusers loads then must
    come from the single file."""
    shutil.copytree(working, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return folder


def test_generate_ckpt_round_trips_and_loads_in_diffusers(sdxl_checkpoint, models_root, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from dreambooth.config import load_config, save_config
    from dreambooth.convert.diffusers_io import load_components
    from dreambooth.service.operations import create_model, generate_ckpt

    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    cfg, _ = load_config(model.config_file)
    cfg.revision = 5  # as if trained: Generate Ckpt refuses an untrained model
    save_config(cfg, model.config_file)
    for half in (False, True):
        ckpt = generate_ckpt("xl", half=half, subdir=True)
        assert ckpt.parent.name == "xl" and ckpt.name == f"xl_5{'_half' if half else ''}.safetensors"
        exported, source = load_state_dict(ckpt)[0], load_state_dict(sdxl_checkpoint)[0]
        assert exported.keys() == source.keys()
        for key, tensor in source.items():
            expected = tensor.half() if half and tensor.is_floating_point() else tensor
            assert exported[key].dtype == expected.dtype and torch.equal(exported[key], expected), key
    full = ckpt.with_name("xl_5.safetensors")
    again = create_working(full, tmp_path / "again", progress=quiet)
    assert again["model_type"] == "SDXL"
    first, second = sdxl_weights(model.working), sdxl_weights(tmp_path / "again")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    config = _weights_free_config(model.working, tmp_path / "config")
    pipe = StableDiffusionXLPipeline.from_single_file(str(full), config=str(config), local_files_only=True)
    unet, _, text_encoder, tokenizer, _ = load_components(model.working)
    prompt = "a photo of sks toy"
    ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        context, pooled = text_encoder(ids)
        theirs = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        assert torch.allclose(theirs[0], context, atol=1e-5) and torch.allclose(theirs[2], pooled, atol=1e-5)
    for ours, loaded in ((unet, pipe.unet), (text_encoder.text_encoder, pipe.text_encoder),
                         (text_encoder.text_encoder_2, pipe.text_encoder_2)):
        mine, theirs = ours.state_dict(), loaded.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
        assert torch.allclose(pipe.unet(x, 500, context, added_cond_kwargs=added).sample,
                              unet(x, 500, context, added_cond_kwargs=added).sample, atol=1e-5)


def test_size_and_crop_of_a_tall_image(tmp_path, sdxl_parts):
    """A 40x400 image goes to the tallest bucket (32x128) at 64 px, is scaled to 32x320 to cover it, and the
    centred window starts 96 px down: time ids (original h, w, crop top, left, target h, w)."""
    from dreambooth.data.sdxl_conditioning import size_and_crop

    assert size_and_crop(40, 400, (32, 128)) == (400, 40, 96, 0, 128, 32)
    assert size_and_crop(400, 40, (128, 32)) == (40, 400, 0, 96, 32, 128)
    assert size_and_crop(64, 64, (64, 64)) == (64, 64, 0, 0, 64, 64)
    write_image(tmp_path / "imgs" / "tall.png", 40, 400, caption="tall")
    write_image(tmp_path / "imgs" / "square.png", 64, 64, seed=1, caption="square")
    _, pairs = pairs_for(tmp_path / "imgs")
    from data_helpers import build

    training_set = build(pairs, sdxl_parts)
    by_name = {item.path.name: n for n, item in enumerate(training_set.items)}
    assert training_set.items[by_name["tall.png"]].bucket == (32, 128)
    batch = training_set.batch([by_name["tall.png"]], torch.Generator().manual_seed(0))
    assert batch.time_ids.tolist() == [[400.0, 40.0, 96.0, 0.0, 128.0, 32.0]]
    assert batch.latents.shape[-2:] == (16, 4)  # the bucket's latents: 128 x 32 pixels
    assert batch.pooled.shape == (1, 48) and batch.embeddings.shape == (1, 77, 96)
    assert batch.input_ids.shape == (1, 2, 77)  # one row per tokenizer
    square = training_set.batch([by_name["square.png"]], torch.Generator().manual_seed(0))
    assert square.time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]


def test_hflip_mirrors_the_crop_offset(tmp_path, sdxl_parts):
    """A 75x64 image in the 64 px square bucket is cut from column 5 of 11 spare ones; mirrored, the same window
    starts at column 11 - 5 = 6. Each row of a batch carries the offset of the copy it trains on."""
    from dreambooth.data.sdxl_conditioning import size_and_crop
    from data_helpers import build

    assert size_and_crop(75, 64, (64, 64)) == (64, 75, 0, 5, 64, 64)
    assert size_and_crop(75, 64, (64, 64), flipped=True) == (64, 75, 0, 6, 64, 64)
    for seed in (0, 1):
        write_image(tmp_path / "imgs" / f"wide{seed}.png", 75, 64, seed=seed, caption="wide")
    _, pairs = pairs_for(tmp_path / "imgs")
    training_set = build(pairs, sdxl_parts, hflip=True, enable_buckets=False)
    bucket = training_set.buckets[0]
    assert not torch.equal(bucket.mean, bucket.mean_flip)
    bucket.std, bucket.std_flip = torch.zeros_like(bucket.std), torch.zeros_like(bucket.std_flip)  # latents = means
    scale = training_set.scaling_factor
    seen = set()
    for seed in range(8):
        batch = training_set.batch([0, 1], torch.Generator().manual_seed(seed))
        for item, flipped in enumerate(batch.flipped.tolist()):  # keys [0, 1]: row n is item n
            seen.add(flipped)
            assert batch.time_ids[item].tolist() == [64.0, 75.0, 0.0, 6.0 if flipped else 5.0, 64.0, 64.0]
            mean = bucket.mean_flip if flipped else bucket.mean  # the latents of the copy the offset describes
            assert torch.allclose(batch.latents[item], mean[training_set.places[item][1]] * scale)
    assert seen == {False, True}


@pytest.fixture(scope="module")
def sdxl_parts(tmp_path_factory):
    from transformers import CLIPTokenizer

    from dreambooth.convert.sdxl_io import PairTokenizer
    from dreambooth.convert.tokenizer import write_clip_tokenizer
    from dreambooth.model.tiny import build_components

    parts = build_components("tiny-sdxl")
    folder = tmp_path_factory.mktemp("sdxl_tokenizers")
    tokenizer = PairTokenizer(CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "1"))),
                              CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "2", pad_token="!"))))
    return parts["unet"], parts["vae"], parts["text_encoder"], tokenizer


class AddedConditionSpy:
    """Records the added conditioning the real trainer hands the real UNet (no behaviour change)."""

    def __init__(self):
        self.calls = []

    def attach(self, unet):
        def record(module, args, kwargs):
            added = kwargs.get("added_cond_kwargs")
            if module.training and added is not None:
                self.calls.append({k: v.detach().clone() for k, v in added.items()})

        unet.register_forward_pre_hook(record, with_kwargs=True)


def test_training_moves_the_loss_with_size_conditioning(sdxl_checkpoint, models_root, one_image):
    from dreambooth.monitor.metrics import read_metrics
    from dreambooth.service.operations import create_model
    from dreambooth.train.loop import Trainer

    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    spy = AddedConditionSpy()

    class SpiedTrainer(Trainer):
        def _prepare(self):
            super()._prepare()
            spy.attach(self.unet)

    concept = {"instance_data_dir": str(one_image), "instance_prompt": "a photo of sks toy", "n_save_sample": 0}
    cfg = quick_config(one_image, num_train_epochs=20, learning_rate=1e-3, seed=0, model_type="SDXL",
                       concepts_list=[concept], save_state_after=False)
    result = SpiedTrainer(model, cfg).run()
    losses = [row["loss"] for row in read_metrics(model.logging)]
    assert result.steps == 20 and len(losses) == 20
    first_mean, last_mean = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last_mean < 0.7 * first_mean, (first_mean, last_mean)
    # the demo image is 64x64 in the 64 px square bucket: uncropped, original = target
    assert len(spy.calls) == 20
    assert spy.calls[0]["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]
    assert spy.calls[0]["text_embeds"].shape == (1, 48)


def test_per_encoder_text_training_previews_and_export(sdxl_checkpoint, models_root, one_image, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from dreambooth.service.operations import create_model

    from PIL import Image

    from dreambooth.train.loop import Trainer

    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    before = sdxl_weights(model.working)
    frozen_file = model.working / "text_encoder_2" / "model.safetensors"
    frozen_inode = frozen_file.stat().st_ino
    concept = {"instance_data_dir": str(one_image), "instance_prompt": "a photo of sks toy", "n_save_sample": 1,
               "sample_seed": 3, "save_infer_steps": 2, "num_class_images_per": 1, "class_prompt": "a photo of a toy",
               "class_infer_steps": 2}
    cfg = quick_config(one_image, num_train_epochs=1, stop_text_encoder=1.0, sdxl_train_text_encoder=True,
                       sdxl_train_text_encoder_2=False, save_state_after=False, save_ckpt_after=True,
                       concepts_list=[concept])
    result = Trainer(model, cfg).run()
    class_images = sorted(model.classifiers(0).glob("*.png"))  # made by the SDXL pipeline before training
    assert len(class_images) == 1 and Image.open(class_images[0]).size == (64, 64)
    after = sdxl_weights(model.working)
    changed = {name: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + "/"))
               for name, _ in COMPONENTS}
    assert changed == {"unet": True, "vae": False, "text_encoder": True, "text_encoder_2": False}
    assert frozen_file.stat().st_ino == frozen_inode  # the frozen encoder is not rewritten at every save
    assert result.samples and all(p.is_file() for p in result.samples)  # previews through the SDXL pipeline

    ckpt = result.checkpoints[0]  # written from the live modules during training
    again = create_working(ckpt, tmp_path / "again", progress=quiet)
    assert again["model_type"] == "SDXL"
    reloaded = sdxl_weights(tmp_path / "again")
    assert reloaded.keys() == after.keys() and all(torch.equal(after[k], reloaded[k]) for k in after)
    config = _weights_free_config(model.working, tmp_path / "config")
    pipe = StableDiffusionXLPipeline.from_single_file(str(ckpt), config=str(config), local_files_only=True)
    trained = after["text_encoder_2/text_model.encoder.layers.0.mlp.fc1.weight"]
    assert torch.equal(pipe.text_encoder_2.state_dict()["text_model.encoder.layers.0.mlp.fc1.weight"], trained)


def test_text_encoder_training_with_no_sdxl_encoder_chosen_is_refused(sdxl_checkpoint, models_root, one_image):
    from dreambooth.service.operations import create_model
    from dreambooth.train.loop import Trainer

    model = create_model("xl", sdxl_checkpoint, progress=quiet)
    cfg = quick_config(one_image, num_train_epochs=1, stop_text_encoder=0.5, sdxl_train_text_encoder=False,
                       sdxl_train_text_encoder_2=False)
    with pytest.raises(DreamboothError) as error:
        Trainer(model, cfg).run()
    assert error.value.field == "sdxl_train_text_encoder" and "stop_text_encoder to 0" in str(error.value)


def test_sdxl_vae_stays_fp32_under_fp16(sdxl_parts):
    """SDXL's VAE overflows in fp16 (NaN latents): under fp16 only the frozen text encoders are cast."""
    import copy

    from dreambooth.train.setup import Models, cast_frozen

    unet, vae, text_encoder, tokenizer = sdxl_parts
    for precision, cast, vae_dtype in (("fp16", ["text_encoder"], torch.float32),
                                       ("bf16", ["vae", "text_encoder"], torch.bfloat16)):
        models = Models(unet, copy.deepcopy(vae), copy.deepcopy(text_encoder), tokenizer, {})
        assert cast_frozen(models, precision, text_encoder_frozen=True) == cast
        assert next(models.vae.parameters()).dtype == vae_dtype
        expected = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        assert next(models.text_encoder.parameters()).dtype == expected


def test_sdxl_sized_layout_on_meta_device():
    """Real SDXL geometry (on the meta device, no memory): the key names and shapes of SDXL base files, the
    configs read back from them, and diffusers' own single-file UNet converter agreeing with our layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from dreambooth.convert.diffusers_io import build_text_encoder, text_encoder_state_dict
    from dreambooth.convert.sdxl_io import build_text_encoder_2
    from dreambooth.convert.sdxl_map import diffusers_to_sdxl, infer_sdxl_configs, sdxl_to_diffusers

    unet_cfg = {"sample_size": 128, "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
                "use_linear_projection": True, "layers_per_block": 2, "block_out_channels": [320, 640, 1280],
                "transformer_layers_per_block": [1, 2, 10], "addition_embed_type": "text_time",
                "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
    vae_cfg = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
               "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    clip_l = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
              "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
    big_g = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
             "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder, text_encoder_2 = build_text_encoder(clip_l), build_text_encoder_2(big_g)
    states = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": text_encoder_state_dict(text_encoder),
              "text_encoder_2": text_encoder_2.state_dict()}
    configs = {"unet": dict(unet.config), "vae": dict(vae.config), "text_encoder": clip_l, "text_encoder_2": big_g}
    ldm = diffusers_to_sdxl(states, configs, {"logit_scale": torch.tensor(4.6052)})
    for key, shape in [("model.diffusion_model.label_emb.0.0.weight", (1280, 2816)),
                       ("model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight", (640, 2048)),
                       ("model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight", (1280, 5120)),
                       ("model.diffusion_model.output_blocks.2.2.conv.weight", (1280, 1280, 3, 3)),
                       ("conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight", (3072, 768)),
                       ("conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight", (3840, 1280)),
                       ("conditioner.embedders.1.model.text_projection", (1280, 1280)),
                       ("first_stage_model.decoder.up.3.upsample.conv.weight", (512, 512, 3, 3))]:
        assert tuple(ldm[key].shape) == shape, key
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" not in ldm  # no attention at the first level
    inferred = infer_sdxl_configs(ldm, {})
    assert {k: inferred["unet"][k] for k in unet_cfg} == unet_cfg
    assert inferred["vae"]["scaling_factor"] == 0.13025
    assert {k: inferred["text_encoder_2"][k] for k in big_g} == big_g
    assert {k: inferred["text_encoder"][k] for k in clip_l} == clip_l
    back, extras = sdxl_to_diffusers(ldm, inferred)
    assert back["unet"].keys() == states["unet"].keys()
    # transformers 4.30 still lists the position_ids buffer, which no checkpoint needs to carry
    assert set(back["text_encoder_2"]) == {k for k in states["text_encoder_2"] if not k.endswith("position_ids")}
    assert set(extras) == {"logit_scale"}
    theirs = convert_ldm_unet_checkpoint(ldm, unet.config)  # how diffusers reads the file's UNet
    assert theirs.keys() == states["unet"].keys()
