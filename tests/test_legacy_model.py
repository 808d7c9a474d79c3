"""The older extension's model and output settings: custom_model_name, pretrained_vae_name_or_path,
scheduler (the preview sampler), attention, sanity samples."""
import pytest
import torch

from conftest import quick_config
from dreambooth.errors import DreamboothError


def _ldm_vae_file(path, seed):
    """A tiny-preset VAE with other weights, written as the WebUI keeps VAEs (LDM keys, one file)."""
    from safetensors.torch import save_file

    from dreambooth.convert.ldm_map import vae_to_ldm
    from dreambooth.model.tiny import build_components

    vae = build_components("tiny", seed=seed)["vae"]
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae.config).items()}
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae.state_dict(), config).items()}, str(path))
    return vae


def test_custom_model_name_names_the_checkpoints(tiny_model, one_image, models_root):
    from dreambooth.train.loop import Trainer

    cfg = quick_config(one_image, num_train_epochs=1, custom_model_name="my-toy", use_subdir=True)
    result = Trainer(tiny_model, cfg).run()
    assert [p.relative_to(models_root / "Stable-diffusion").as_posix() for p in result.checkpoints] == \
        ["my-toy/my-toy_1.safetensors"]


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden"])
def test_custom_model_name_refuses_paths(bad):
    from dreambooth.config import TrainConfig

    with pytest.raises(DreamboothError) as error:
        TrainConfig({"custom_model_name": bad})
    assert error.value.field == "custom_model_name"


def test_alternate_vae_changes_the_cached_latents_and_is_exported(tiny_model, one_image, tmp_path, models_root):
    from dreambooth.convert.checkpoint_io import load_state_dict
    from dreambooth.convert.diffusers_io import load_components
    from dreambooth.convert.ldm_map import vae_to_ldm
    from dreambooth.data.cache import encode
    from dreambooth.data.images import load_pixels, probe
    from dreambooth.train.loop import Trainer

    other = _ldm_vae_file(models_root / "other_vae.safetensors", seed=7)
    swapped = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1,
                                               pretrained_vae_name_or_path=str(models_root / "other_vae.safetensors")))
    swapped._prepare()
    cached = swapped.training_set.buckets[0].mean
    image = sorted(one_image.glob("*.png"))[0]
    pixels = load_pixels(probe(image), swapped.training_set.buckets[0].size)[None]
    own_vae = load_components(tiny_model.working)[1]
    assert torch.allclose(cached, encode(other, pixels, "cpu")[0], atol=1e-5)  # encoded with the other VAE
    assert (cached - encode(own_vae, pixels, "cpu")[0]).abs().max() > 1e-3  # not the model's own

    result = swapped.run()
    written = load_state_dict(result.checkpoints[-1])[0]
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(other.config).items()}
    for key, tensor in vae_to_ldm(other.state_dict(), config).items():
        assert torch.equal(written[f"first_stage_model.{key}"], tensor), key


def test_alternate_vae_of_another_shape_is_refused(tiny_model, one_image, models_root):
    from safetensors.torch import save_file

    from dreambooth.train.loop import Trainer

    save_file({"encoder.conv_in.weight": torch.zeros(3, 3, 3, 3)}, str(models_root / "bad.safetensors"))
    cfg = quick_config(one_image, pretrained_vae_name_or_path=str(models_root / "bad.safetensors"))
    with pytest.raises(DreamboothError) as error:
        Trainer(tiny_model, cfg).run()
    assert error.value.field == "pretrained_vae_name_or_path"


def test_every_sampler_builds_and_the_choice_changes_the_preview(tiny_parts, tmp_path):
    from dreambooth.convert.diffusers_io import SCHEDULER_CONFIG
    from dreambooth.model.sampling import SampleRequest, build_pipeline, make_sampler, render_samples
    from dreambooth.registry import SAMPLERS

    for name in SAMPLERS:
        assert type(make_sampler(name, SCHEDULER_CONFIG)).__name__ == f"{name}Scheduler"
    unet, vae, text_encoder, tokenizer = tiny_parts
    request = [SampleRequest("a photo of sks toy", "", 5, 3, 7.5)]
    pixels = {}
    for name in ("PNDM", "EulerAncestralDiscrete"):
        pipeline = build_pipeline(unet, vae, text_encoder, tokenizer, dict(SCHEDULER_CONFIG), name)
        out = tmp_path / name
        out.mkdir()
        from PIL import Image

        pixels[name] = torch.tensor(list(Image.open(render_samples(pipeline, request, 64, out, "1", "cpu")[0]).getdata()))
    assert not torch.equal(pixels["PNDM"], pixels["EulerAncestralDiscrete"])


def test_attention_choice_sets_the_processors_and_xformers_is_refused_without_cuda(tiny_parts):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from dreambooth.model.attention import check_attention, set_attention

    unet = tiny_parts[0]
    try:
        latents, steps = torch.randn(1, 4, 8, 8), torch.tensor([10])
        context = torch.randn(1, 77, unet.config.cross_attention_dim)
        outputs = {}
        for choice, kind in (("default", AttnProcessor), ("sdpa", AttnProcessor2_0)):
            set_attention([unet], choice, "cpu")
            assert {type(p) for p in unet.attn_processors.values()} == {kind}
            with torch.no_grad():
                outputs[choice] = unet(latents, steps, context).sample
        assert torch.allclose(outputs["default"], outputs["sdpa"], atol=1e-5)  # the same attention, computed two ways
    finally:
        set_attention([unet], "sdpa", "cpu")
    with pytest.raises(DreamboothError) as error:
        check_attention("xformers", "cpu")
    assert error.value.field == "attention" and "choose sdpa" in str(error.value)


def test_training_start_refuses_xformers_where_it_cannot_run(tiny_model, one_image):
    from dreambooth.service.operations import preflight

    with pytest.raises(DreamboothError) as error:
        preflight(quick_config(one_image, attention="xformers"))
    assert error.value.field == "attention"


def test_sanity_sample_is_added_with_its_prompt_and_seed(tiny_model, one_image):
    from dreambooth.service.operations import generate_samples

    cfg = quick_config(one_image, sanity_prompt="a red cube", sanity_seed=1234, scheduler="DDIM")
    written = generate_samples("tiny", cfg)
    assert len(written) == 2  # the concept's sample and the sanity sample
    text = written[-1].with_suffix(".txt").read_text()
    assert text.startswith("a red cube\n") and "Seed: 1234" in text


def test_the_tab_groups_the_older_settings_inside_one_advanced_accordion(models_root):
    import gradio as gr

    from dreambooth.registry import FIELDS
    from dreambooth.ui.tab import Tab

    tab = Tab()
    blocks = tab.build()
    advanced = [b for b in blocks.blocks.values() if isinstance(b, gr.Accordion) and b.elem_id == "dbt_group_advanced"]
    assert len(advanced) == 1

    def inside(block):
        for child in getattr(block, "children", []):
            yield child
            yield from inside(child)

    nested = {b.elem_id for b in inside(advanced[0])}
    older = [f.name for f in FIELDS if f.group.startswith("Advanced:")]
    assert len(older) >= 25 and all(f"dbt_{name}" in nested for name in older)
    assert "dbt_learning_rate" not in nested and advanced[0].open is False
    assert tab.widgets["attention"].choices  # a choice in the tab, not a free text


def test_the_settings_reach_the_cli_and_the_rest_api(tiny_model, one_image, capsys, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dreambooth.api import register_routes
    from dreambooth.cli import main
    from dreambooth.config import load_config

    assert main(["params", "tiny", "--set", "max_token_length=150", "--set", "scheduler=DDIM",
                 "--set", "prior_loss_scale=true"]) == 0
    cfg, _ = load_config(tiny_model.config_file)
    assert (cfg.max_token_length, cfg.scheduler, cfg.prior_loss_scale) == (150, "DDIM", True)
    assert main(["params", "tiny", "--set", "max_token_length=100"]) == 2
    assert "max_token_length" in capsys.readouterr().err

    app = FastAPI()
    register_routes(app)
    client = TestClient(app)
    url = "/dreambooth-tab/v1/"
    ok = client.post(url + "params", json={"model_name": "tiny", "params": {"use_dream": True, "attention": "default"}})
    assert ok.status_code == 200, ok.text
    for params, field in (({"attention": "flash"}, "attention"), ({"custom_model_name": "../up"}, "custom_model_name"),
                          ({"pretrained_vae_name_or_path": "/etc/passwd"}, "pretrained_vae_name_or_path")):
        answer = client.post(url + "params", json={"model_name": "tiny", "params": params})
        assert answer.status_code == 400 and answer.json()["field"] == field, answer.text
    monkeypatch.setenv("DREAMBOOTH_DATA_ROOTS", str(one_image))
    concept = [{"instance_data_dir": str(one_image)}]
    answer = client.post(url + "start_training", json={"model_name": "tiny",
                                                         "params": {"attention": "xformers", "concepts_list": concept}})
    assert answer.status_code == 400 and answer.json()["field"] == "attention", answer.text
