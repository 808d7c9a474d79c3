"""Latent and text caches: cached == uncached, the disk cache and its invalidation, hflip with caching."""
import pytest
import torch

from conftest import quick_config
from data_helpers import build, pairs_for, write_image
from dreambooth.train.loop import Trainer
from dreambooth.monitor.metrics import read_metrics
from dreambooth.model.text import encode_text


def _folder(tmp_path, count=3):
    folder = tmp_path / "inst"
    for n in range(count):
        write_image(folder / f"img{n}.png", 64 + 16 * n, 64, n, caption=f"sks toy {n}")
    return folder


@pytest.mark.parametrize("hflip", [False, True])
def test_cached_and_uncached_batches_are_the_same(tmp_path, tiny_parts, hflip):
    folder = _folder(tmp_path)
    cached = build(pairs_for(folder)[1], tiny_parts, hflip=hflip, enable_buckets=False)
    fresh = build(pairs_for(folder)[1], tiny_parts, hflip=hflip, enable_buckets=False, cache_latents=False)
    assert cached.cached and not fresh.cached
    keys = cached.epoch_batches(3, 0, 3)[0]
    for _ in range(3):  # several draws: with hflip both flipped and plain rows occur
        a = cached.batch(keys, torch.Generator().manual_seed(5))
        b = fresh.batch(keys, torch.Generator().manual_seed(5))
        torch.testing.assert_close(a.latents, b.latents, rtol=1e-4, atol=1e-5)
        assert torch.equal(a.input_ids, b.input_ids)


def test_text_embeddings_cached_only_while_the_text_encoder_is_frozen(tmp_path, tiny_parts):
    folder = _folder(tmp_path, 2)
    frozen = build(pairs_for(folder)[1], tiny_parts)
    keys = frozen.epoch_batches(0, 0, 2)[0]
    batch = frozen.batch(keys, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = encode_text(tiny_parts[2], batch.input_ids)
    torch.testing.assert_close(batch.embeddings, expected)
    training = build(pairs_for(folder)[1], tiny_parts, cache_text=False)
    assert training.batch(keys, torch.Generator().manual_seed(0)).embeddings is None


def test_disk_cache_is_reused_and_invalidated(tmp_path, tiny_parts):
    folder = _folder(tmp_path)
    cache = tmp_path / "cache"
    logs = []
    first = build(pairs_for(folder)[1], tiny_parts, cache_dir=cache, hflip=True, log=logs.append)
    files = sorted((cache / "latents").glob("*.safetensors"))
    assert len(files) == 6 and "0 of 6" in logs[-1]  # 3 images, plain and flipped

    again = build(pairs_for(folder)[1], tiny_parts, cache_dir=cache, hflip=True, log=logs.append)
    assert "6 of 6" in logs[-1]
    for one, two in zip(first.buckets, again.buckets):
        assert torch.equal(one.mean, two.mean) and torch.equal(one.std_flip, two.std_flip)

    write_image(folder / "img1.png", 80, 64, 99, caption="sks toy 1")  # the image file changes
    build(pairs_for(folder)[1], tiny_parts, cache_dir=cache, hflip=True, log=logs.append)
    assert "4 of 6" in logs[-1] and "2 stale removed" in logs[-1]

    build(pairs_for(folder)[1], tiny_parts, resolution=48, step=16, cache_dir=cache, hflip=True,
          log=logs.append)  # the resolution (and so the buckets) change
    assert "0 of 6" in logs[-1]

    vae = tiny_parts[1]
    with torch.no_grad():  # another VAE
        param = next(vae.parameters())
        param.add_(1e-3)
        try:
            build(pairs_for(folder)[1], tiny_parts, resolution=48, step=16, cache_dir=cache, hflip=True,
                  log=logs.append)
        finally:
            param.sub_(1e-3)
    assert "0 of 6" in logs[-1] and len(list((cache / "latents").glob("*.safetensors"))) == 6


def test_cached_and_uncached_training_give_the_same_first_loss(models_root, tiny_checkpoint, demo_images):
    from dreambooth.service.operations import create_model

    losses = []
    for cache_latents in (True, False):
        model = create_model(f"cache-{cache_latents}", tiny_checkpoint, progress=lambda m: None)
        concept = {"instance_data_dir": str(demo_images), "instance_prompt": "a photo of sks toy",
                   "n_save_sample": 0}
        cfg = quick_config(demo_images, num_train_epochs=1, train_batch_size=6, hflip=True, concepts_list=[concept],
                           cache_latents=cache_latents, cache_latents_on_disk=cache_latents, save_ckpt_after=False,
                           save_state_after=False)
        Trainer(model, cfg).run()
        losses.append(read_metrics(model.logging)[0]["loss"])
        assert any((model.cache / "latents").glob("*")) == cache_latents
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
