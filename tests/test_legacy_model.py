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
    from dreambooth.convert.ldm_map import vae_to_ldm
    from dreambooth.data.cache import encode
    from dreambooth.data.images import load_pixels, probe
    from dreambooth.train.loop import Trainer

    other = _ldm_vae_file(models_root / "other_vae.safetensors", seed=7)
    own = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1))
    own._prepare()
    swapped = Trainer(tiny_model, quick_config(one_image, num_train_epochs=1,
                                               pretrained_vae_name_or_path=str(models_root / "other_vae.safetensors")))
    swapped._prepare()
    mean_own, mean_swapped = own.training_set.buckets[0].mean, swapped.training_set.buckets[0].mean
    assert (mean_own - mean_swapped).abs().max() > 1e-3
    image = sorted(one_image.glob("*.png"))[0]
    expected, _ = encode(other, load_pixels(probe(image), swapped.training_set.buckets[0].size)[None], "cpu")
    assert torch.allclose(mean_swapped, expected, atol=1e-5)

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
