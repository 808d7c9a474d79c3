"""Captions, tag shuffle, truncation warnings and aspect-ratio buckets (the builder on the tiny VAE)."""
import random

import torch

from data_helpers import build, pairs_for, write_image
from dreambooth.data import buckets, captions


def test_captions_tokens_shuffle_and_class_words(tmp_path):
    image = write_image(tmp_path / "003_ohwx person smiling.png", 8, 8)
    assert captions.filewords(image) == "ohwx person smiling"
    assert captions.class_words("[filewords]", image, "ohwx") == "person smiling"
    assert captions.class_words("a photo of a person", image, "ohwx") == "a photo of a person"
    plain = write_image(tmp_path / "person, red hat.png", 8, 8)
    assert captions.build_caption("[filewords]", plain, "ohwx", "person") == "ohwx person, red hat"

    caption = "ohwx, red hat, blue sky, smiling, outdoors"
    seen = {captions.shuffle_tags(caption, 1, random.Random(n)) for n in range(20)}
    assert len(seen) > 1 and all(s.startswith("ohwx, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in seen)
    assert captions.shuffle_tags("one tag", 1, random.Random(0)) == "one tag"


def test_truncated_caption_warns_naming_the_file(tmp_path, tiny_parts):
    folder = tmp_path / "inst"
    write_image(folder / "a.png", 64, 64, caption="short caption")
    long = write_image(folder / "b.png", 64, 64, 1, caption=", ".join(f"tag{n} word" for n in range(60)))
    warnings = []
    _, pairs = pairs_for(folder)
    build(pairs, tiny_parts, warn=warnings.append)
    assert len(warnings) == 1 and str(long) in warnings[0] and "max_token_length 75" in warnings[0]


def test_bucket_sizes_keep_the_area_and_the_step():
    sizes = buckets.bucket_sizes(512, 64)
    assert (512, 512) in sizes and (768, 320) in sizes and (320, 768) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)
    assert buckets.nearest_bucket(1200, 800, sizes) == (640, 384)  # 1.5 -> 1.67 (nearest on a log scale)
    assert buckets.nearest_bucket(800, 1200, sizes) == (384, 640)
    assert buckets.nearest_bucket(300, 300, sizes) == (512, 512)
    assert buckets.bucket_sizes(512, 64, enabled=False) == [(512, 512)]


def test_buckets_hold_the_right_images(tmp_path, tiny_parts):
    folder = tmp_path / "inst"
    shapes = {"sq1": (64, 64), "sq2": (80, 80), "wide1": (128, 48), "wide2": (120, 40), "tall": (40, 128)}
    for n, (name, (w, h)) in enumerate(shapes.items()):
        write_image(folder / f"{name}.png", w, h, n)
    _, pairs = pairs_for(folder)
    data = build(pairs, tiny_parts)
    got = {item.path.stem: item.bucket for item in data.items}
    assert got["sq1"] == got["sq2"] == (64, 64)
    assert got["wide1"] == got["wide2"] and got["wide1"][0] > got["wide1"][1]
    assert got["tall"] == got["wide1"][::-1]
    for bucket in data.buckets:  # latents have the bucket's shape
        w, h = bucket.size
        assert bucket.mean.shape[1:] == (4, h // 8, w // 8)
    assert len(data) == 5 and data.batches_per_epoch(2) == 3 and data.plan_items(2) == 6

    generator = torch.Generator().manual_seed(0)
    for epoch in range(3):
        batches = data.epoch_batches(7, epoch, 2)
        assert batches == data.epoch_batches(7, epoch, 2)  # a function of (seed, epoch)
        assert len(batches) == 3
        assert sorted(data.item_of(k) for b in batches for k in b) == list(range(5))
        for keys in batches:
            sizes = {data.items[data.item_of(k)].bucket for k in keys}
            assert len(sizes) == 1
            w, h = sizes.pop()
            batch = data.batch(keys, generator)
            assert batch.latents.shape == (len(keys), 4, h // 8, w // 8) and not batch.prior.any()

    report = buckets.bucket_report([i.bucket for i in data.items], [], 64)
    counts = {(r["width"], r["height"]): r["images"] for r in report["buckets"]}
    assert counts == {(64, 64): 2, got["wide1"]: 2, got["tall"]: 1}


def test_buckets_off_crops_every_image_square(tmp_path, tiny_parts):
    folder = tmp_path / "inst"
    write_image(folder / "wide.png", 128, 48)
    write_image(folder / "tall.png", 40, 128, 1)
    _, pairs = pairs_for(folder)
    data = build(pairs, tiny_parts, enable_buckets=False)
    assert {item.bucket for item in data.items} == {(64, 64)} and len(data.buckets) == 1
    assert data.plan_items(4) == 2


def test_shuffled_tags_give_fresh_input_ids(tmp_path, tiny_parts):
    folder = tmp_path / "inst"
    write_image(folder / "a.png", 64, 64, caption="sks, red, green, blue, yellow, purple, orange")
    _, pairs = pairs_for(folder)
    data = build(pairs, tiny_parts, shuffle_tags=True, keep_tags=1)
    generator = torch.Generator().manual_seed(0)
    ids = set()
    for epoch in range(6):
        (keys,) = data.epoch_batches(1, epoch, 1)
        batch = data.batch(keys, generator)
        assert batch.embeddings is None and batch.input_ids.shape == (1, 77)
        ids.add(tuple(batch.input_ids[0].tolist()))
    assert len(ids) > 1
