"""SD2.x: OpenCLIP text encoder conversion, model-type detection (512 epsilon / 768 v-prediction), training
against the v target, samples and Generate Ckpt round trips, on tiny SD2-shaped models (offline, no mocks)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import folder_weights, quick_config
from dreambooth.convert.checkpoint_io import load_state_dict
from dreambooth.convert.create import create_working
from dreambooth.errors import DreamboothError

quiet = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def sd2_checkpoints(tmp_path_factory):
    from dreambooth.model.tiny import write_tiny_checkpoint

    folder = tmp_path_factory.mktemp("sd2_sources")
    return {preset: write_tiny_checkpoint(folder / f"{preset}.safetensors", preset=preset)
            for preset in ("tiny-v2", "tiny-v2v")}


def test_single_file_layout_is_openclip(sd2_checkpoints):
    tensors, metadata = load_state_dict(sd2_checkpoints["tiny-v2v"])
    assert not any(k.startswith("cond_stage_model.transformer.") for k in tensors)
    text = {k for k in tensors if k.startswith("cond_stage_model.model.")}
    # 3 diffusers layers + SD2's unused last block, 12 tensors each; embeddings, ln_final, projection, scale
    assert len(text) == 4 * 12 + 6
    assert tensors["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 64, 64)
    assert tensors["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # linear projection
    assert json.loads(metadata["dreambooth_configs"])["scheduler"]["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("preset,model_type,resolution", [("tiny-v2", "v2x-512", 512), ("tiny-v2v", "v2x", 768)])
def test_create_detects_and_stores_model_type(sd2_checkpoints, models_root, preset, model_type, resolution):
    from dreambooth.service.operations import create_model, load_params
    from dreambooth.convert.diffusers_io import load_components

    model = create_model("m", sd2_checkpoints[preset], progress=quiet)
    cfg, _ = load_params("m")
    assert cfg.model_type == model_type and cfg.resolution == resolution
    unet, _, text_encoder, tokenizer, scheduler = load_components(model.working)
    assert scheduler["prediction_type"] == ("v_prediction" if model_type == "v2x" else "epsilon")
    assert unet.config.use_linear_projection and text_encoder.config.hidden_act == "gelu"
    assert text_encoder.config.num_hidden_layers == 3
    assert tokenizer.pad_token_id == 0  # SD2 pads with "!" like the WebUI's OpenCLIP wrapper
    assert (model.working / "openclip_extra.safetensors").is_file()


def test_create_model_type_override_and_mismatch(sd2_checkpoints, tmp_path):
    info = create_working(sd2_checkpoints["tiny-v2"], tmp_path / "w1", progress=quiet, model_type="v2x")
    assert info["model_type"] == "v2x" and info["prediction_type"] == "v_prediction" and info["resolution"] == 768
    with pytest.raises(DreamboothError) as error:
        create_working(sd2_checkpoints["tiny-v2"], tmp_path / "w2", progress=quiet, model_type="v1x")
    assert "SD2.x" in str(error.value) and not (tmp_path / "w2").exists()
    with pytest.raises(DreamboothError):
        create_working(sd2_checkpoints["tiny-v2"], tmp_path / "w3", progress=quiet, model_type="v3")


def test_forward_pass_detection_without_metadata(sd2_checkpoints, tmp_path):
    """No metadata: the WebUI-style test decides. A UNet whose output is a constant -2 "predicts v"."""
    from safetensors.torch import save_file

    from dreambooth.convert.v_prediction import looks_like_v_prediction, v_prediction_score
    from dreambooth.model.tiny import build_components

    tensors, _ = load_state_dict(sd2_checkpoints["tiny-v2"])
    tensors["model.diffusion_model.out.2.weight"] = torch.zeros_like(tensors["model.diffusion_model.out.2.weight"])
    for bias, expected in ((-2.0, "v2x"), (0.0, "v2x-512")):
        tensors["model.diffusion_model.out.2.bias"] = torch.full_like(tensors["model.diffusion_model.out.2.bias"], bias)
        path = tmp_path / f"bare{bias}.safetensors"
        save_file(tensors, str(path))  # no metadata at all: configs come from shapes and SD2 defaults
        assert create_working(path, tmp_path / f"w{bias}", progress=quiet)["model_type"] == expected
    unet = build_components("tiny-v2")["unet"]
    assert isinstance(v_prediction_score(unet), float) and isinstance(looks_like_v_prediction(unet), bool)


class TargetSpy:
    """Records what the real trainer feeds add_noise and what the real UNet predicts (no behaviour change)."""

    def __init__(self):
        self.calls, self.predictions = [], []

    def attach(self, trainer):
        scheduler, real = trainer.noise_scheduler, trainer.noise_scheduler.add_noise

        def add_noise(latents, noise, timesteps):
            self.calls.append((latents.detach().clone(), noise.detach().clone(), timesteps.detach().clone()))
            return real(latents, noise, timesteps)

        scheduler.add_noise = add_noise
        def record(module, args, output):  # training calls return an output object, previews a tuple
            self.predictions.append((output[0] if isinstance(output, tuple) else output.sample).detach().clone())

        trainer.unet.register_forward_hook(record)


def _spied_trainer(model, cfg):
    from dreambooth.train.loop import Trainer

    spy = TargetSpy()

    class SpiedTrainer(Trainer):
        def _prepare(self):
            super()._prepare()
            spy.attach(self)

    return SpiedTrainer(model, cfg), spy


def _first_step_losses(trainer, spy, model):
    from dreambooth.monitor.metrics import read_metrics

    latents, noise, timesteps = spy.calls[0]
    prediction = spy.predictions[0]
    logged = read_metrics(model.logging)[0]["loss"]
    velocity = trainer.noise_scheduler.get_velocity(latents, noise, timesteps)
    mse = lambda target: torch.nn.functional.mse_loss(prediction.float(), target.float()).item()  # noqa: E731
    return logged, mse(velocity), mse(noise)


def test_v_prediction_model_trains_on_v_and_round_trips(sd2_checkpoints, models_root, one_image, tmp_path):
    from diffusers import StableDiffusionPipeline

    from dreambooth.service.operations import create_model, generate_ckpt, load_params

    model = create_model("vpred", sd2_checkpoints["tiny-v2v"], progress=quiet)
    cfg = quick_config(one_image, num_train_epochs=1, model_type="v2x", save_state_after=False,
                       save_ckpt_after=True)
    trainer, spy = _spied_trainer(model, cfg)
    result = trainer.run()
    assert result.steps == 1 and len(spy.calls) == 1
    logged, against_v, against_noise = _first_step_losses(trainer, spy, model)
    assert logged == pytest.approx(against_v, rel=1e-4, abs=1e-6)
    assert abs(against_v - against_noise) > 1e-3 and logged != pytest.approx(against_noise, rel=1e-3)

    assert result.samples and all(p.is_file() for p in result.samples)  # the end-of-training preview (v model)

    during = result.checkpoints[0]  # written from the live modules by the trainer
    ckpt = generate_ckpt("vpred")  # Generate Ckpt: from working/
    for path in (during, ckpt):
        tensors, metadata = load_state_dict(path)
        assert any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in tensors)
        assert not any(k.startswith("cond_stage_model.transformer.") for k in tensors)
        assert json.loads(metadata["dreambooth_configs"])["scheduler"]["prediction_type"] == "v_prediction"
    source_tensors = load_state_dict(sd2_checkpoints["tiny-v2v"])[0]
    exported = load_state_dict(ckpt)[0]
    assert exported.keys() == source_tensors.keys()
    last = "cond_stage_model.model.transformer.resblocks.3.mlp.c_fc.weight"  # the unused block, carried unchanged
    assert torch.equal(exported[last], source_tensors[last])

    again = tmp_path / "again"
    info = create_working(ckpt, again, progress=quiet)
    assert info["model_type"] == "v2x"
    first, second = folder_weights(model.working), folder_weights(again)
    assert first.keys() == second.keys()
    for key in first:
        assert (first[key].float() - second[key].float()).abs().max().item() <= 1e-6, key
    assert load_params("vpred")[0].model_type == "v2x"

    pipe = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(model.working), local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ids = torch.tensor([[49406, 320, 1125, 539, 48136, 1929, 49407] + [0] * 70])
    from dreambooth.convert.diffusers_io import load_components

    unet, _, text_encoder, _, _ = load_components(model.working)
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        assert torch.allclose(pipe.text_encoder(ids)[0], hidden, atol=1e-5)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(pipe.unet(x, 500, hidden).sample, unet(x, 500, hidden).sample, atol=1e-5)


def test_epsilon_sd2_model_trains_on_noise(sd2_checkpoints, models_root, one_image):
    from dreambooth.service.operations import create_model

    model = create_model("eps", sd2_checkpoints["tiny-v2"], progress=quiet)
    concept = {"instance_data_dir": str(one_image), "instance_prompt": "a photo of sks toy", "n_save_sample": 0}
    cfg = quick_config(one_image, num_train_epochs=1, model_type="v2x-512", save_state_after=False,
                       save_ckpt_after=False, concepts_list=[concept])  # no preview: only the target matters
    trainer, spy = _spied_trainer(model, cfg)
    trainer.run()
    logged, against_v, against_noise = _first_step_losses(trainer, spy, model)
    assert logged == pytest.approx(against_noise, rel=1e-4, abs=1e-6)
    assert abs(against_v - against_noise) > 1e-3


def test_sd2_sized_layout_on_meta_device():
    """Real SD2 geometry: 24 OpenCLIP blocks in the file, 23 diffusers layers, 64-dim heads, linear proj."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dreambooth.convert.diffusers_io import build_text_encoder
    from dreambooth.convert.ldm_infer import infer_configs
    from dreambooth.convert.ldm_map import diffusers_to_ldm, ldm_to_diffusers

    unet_cfg = {"sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                "use_linear_projection": True, "layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280],
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    vae_cfg = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
               "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    te_cfg = {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
              "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 512}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder = build_text_encoder(te_cfg)
    ldm = diffusers_to_ldm(unet, vae, text_encoder)
    text = [k for k in ldm if k.startswith("cond_stage_model.")]
    assert all(k.startswith("cond_stage_model.model.") for k in text) and len(text) == 24 * 12 + 6
    for key, shape in [("cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight", (3072, 1024)),
                       ("cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.weight", (4096, 1024)),
                       ("cond_stage_model.model.positional_embedding", (77, 1024)),
                       ("cond_stage_model.model.text_projection", (1024, 512)),
                       ("model.diffusion_model.input_blocks.1.1.proj_in.weight", (320, 320)),
                       ("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", (1280, 1024))]:
        assert tuple(ldm[key].shape) == shape, key
    configs = infer_configs(ldm, {})
    assert configs["unet"]["use_linear_projection"] and configs["unet"]["attention_head_dim"] == [5, 10, 20, 20]
    assert configs["unet"]["cross_attention_dim"] == 1024
    te = configs["text_encoder"]
    assert (te["num_hidden_layers"], te["num_attention_heads"], te["intermediate_size"], te["hidden_act"],
            te["projection_dim"]) == (23, 16, 4096, "gelu", 512)
    unet_sd, _, te_sd = ldm_to_diffusers(ldm, configs)
    assert unet_sd.keys() == unet.state_dict().keys()
    assert {k.removeprefix("text_model.") for k in te_sd} == \
        {k.removeprefix("text_model.") for k in text_encoder.state_dict() if not k.endswith("position_ids")}
