"""Prior preservation: class images generated once and reused, the pairing rule, the prior loss weight."""
import json

import pytest
import torch

from conftest import quick_config
from data_helpers import build, pairs_for, write_image
from dreambooth.data.class_images import load_class_images
from dreambooth.train.control import TrainControl
from dreambooth.train.loop import Trainer
from dreambooth.monitor.metrics import read_metrics


def test_class_images_pair_round_robin_within_the_bucket(tmp_path, tiny_parts):
    instances, classes = tmp_path / "inst", tmp_path / "class"
    write_image(instances / "a.png", 64, 64, 0)
    write_image(instances / "b.png", 128, 48, 1)  # a wide bucket
    for n in range(4):
        write_image(classes / f"c{n}.png", 64, 64, 10 + n, caption="toy")
    concepts, pairs = pairs_for(instances, class_data_dir=str(classes), num_class_images_per=2,
                                class_prompt="a photo of [filewords]")
    items = [item for item, _ in pairs]
    build(pairs, tiny_parts)  # assigns the instance buckets
    class_pairs, owned = load_class_images(concepts, items, None, lambda m: None)
    names = [[class_pairs[c][0].path.stem for c in mine] for mine in owned]
    assert names == [["c0", "c2"], ["c1", "c3"]]  # C_i belongs to I_(i mod n)
    assert all(item.caption == "a photo of toy" and item.is_class for item, _ in class_pairs)
    assert [class_pairs[c][0].bucket for c in owned[1]] == [items[1].bucket] * 2

    data = build(pairs, tiny_parts, classes=class_pairs, owned=owned)
    generator = torch.Generator().manual_seed(0)
    used = []
    for epoch in range(2):
        for keys in data.epoch_batches(0, epoch, 1):
            batch = data.batch(keys, generator)
            assert batch.prior.tolist() == [False, True] and batch.latents.shape[0] == 2
            item = data.item_of(keys[0])
            used.append(data.class_items[data.class_for(item, epoch)].path.stem)
    assert sorted(used) == ["c0", "c1", "c2", "c3"]  # every class image once in two epochs


def _run(model, cfg):
    lines = []
    result = Trainer(model, cfg, TrainControl(on_log=lines.append)).run()
    return result, lines, read_metrics(model.logging)[0]


def test_class_images_generated_once_and_the_prior_weight_applies(models_root, tiny_checkpoint, demo_images,
                                                                  tmp_path):
    from dreambooth.service.operations import create_model

    instances = tmp_path / "two"
    for path in sorted(demo_images.glob("*.png"))[:2]:
        (instances / path.name).parent.mkdir(exist_ok=True)
        (instances / path.name).write_bytes(path.read_bytes())
    concept = {"instance_data_dir": str(instances), "instance_prompt": "a photo of sks toy", "n_save_sample": 0,
               "num_class_images_per": 2, "class_prompt": "a photo of a toy", "class_infer_steps": 2}
    settings = dict(num_train_epochs=1, train_batch_size=2, sample_batch_size=3, save_ckpt_after=False)

    first = create_model("first", tiny_checkpoint, progress=lambda m: None)
    cfg = quick_config(instances, prior_loss_weight=0.0, concepts_list=[concept], **settings)
    _, lines, row_zero = _run(first, cfg)
    folder = first.classifiers(0)
    made = sorted(folder.glob("*.png"))
    assert len(made) == 4 and all(p.with_suffix(".txt").read_text().strip() == "a photo of a toy" for p in made)
    assert any("generating 4 class image(s)" in line for line in lines)
    counts = json.loads((first.path / "bucket_counts.json").read_text())
    assert counts["buckets"] == [{"width": 64, "height": 64, "images": 2, "class_images": 4}]

    second = create_model("second", tiny_checkpoint, progress=lambda m: None)
    stamps = {p: p.stat().st_mtime_ns for p in made}
    reuse = dict(concept, class_data_dir=str(folder))
    _, lines, row_two = _run(second, quick_config(instances, prior_loss_weight=2.0, concepts_list=[reuse], **settings))
    assert not any("generating" in line for line in lines)  # the second run generates none
    assert {p: p.stat().st_mtime_ns for p in sorted(folder.glob("*.png"))} == stamps

    # same weights, seed and data: only the weight differs, so the loss moves by 2 x the prior term
    assert row_zero["prior_loss"] > 0
    assert row_two["prior_loss"] == pytest.approx(row_zero["prior_loss"], rel=1e-5)
    assert row_two["loss"] - row_zero["loss"] == pytest.approx(2.0 * row_zero["prior_loss"], rel=1e-4)


# Two class prompts equal in their first 75 tokens (the shared part alone is over 75) and different after.
_SHARED = ", ".join(f"tag{n} word" for n in range(30))
_LONG_CLASS_PROMPTS = (f"{_SHARED}, red ball", f"{_SHARED}, blue cube")


def _pixels(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.int16)


def test_a_batch_of_class_prompts_over_75_tokens_is_encoded_in_long_prompt_windows(tiny_parts, tmp_path,
                                                                                   monkeypatch):
    """With max_token_length 150 a batch of class prompts reaches the pipeline as the previews' long-prompt
    windows (two 77-token windows per prompt, the negative prompt alike), so the words after token 75 change
    the class image; with CLIP's one window they are cut and the pipeline encodes the prompts itself."""
    from dreambooth.config import Concept
    from dreambooth.convert.diffusers_io import SCHEDULER_CONFIG
    from dreambooth.data.class_images import ClassJob, generate_class_images
    from dreambooth.model.long_prompts import PromptLayout
    from dreambooth.model.sampling import build_pipeline, long_prompt_embeddings

    unet, vae, text_encoder, tokenizer = tiny_parts
    assert 75 < len(tokenizer(_SHARED, add_special_tokens=False).input_ids)
    assert len(tokenizer(_LONG_CLASS_PROMPTS[1], add_special_tokens=False).input_ids) <= 150
    pipeline = build_pipeline(unet, vae, text_encoder, tokenizer, dict(SCHEDULER_CONFIG))
    concepts = [Concept({"class_infer_steps": 2, "class_negative_prompt": "blurry"})]
    seen = []
    original = type(pipeline).__call__

    def recording(self, *args, **kwargs):  # the real pipeline, noting the conditioning it was given
        seen.append((kwargs.get("prompt_embeds"), kwargs.get("negative_prompt_embeds")))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(type(pipeline), "__call__", recording)
    images = {}
    for tokens in (75, 150):
        jobs = [ClassJob(0, 0, tmp_path / str(tokens) / f"{n}.png", "", prompt, (64, 64))
                for n, prompt in enumerate(_LONG_CLASS_PROMPTS)]  # number 0 both: the same seed
        long_prompts = long_prompt_embeddings(PromptLayout(tokenizer, tokens), text_encoder, 1, "cpu")
        assert generate_class_images(jobs, pipeline, concepts, 2, 7, None, lambda m: None,
                                     long_prompts=long_prompts) == 2
        images[tokens] = [_pixels(job.path) for job in jobs]
    assert seen[0] == (None, None)  # 75 tokens: the pipeline tokenizes the prompts itself, one window
    embeddings, negative = seen[1]
    assert tuple(embeddings.shape[:2]) == tuple(negative.shape[:2]) == (2, 154)  # two prompts, two windows each
    assert torch.allclose(embeddings[0, :77], embeddings[1, :77], atol=1e-5)  # the same first 75 tokens
    assert not torch.allclose(embeddings[0, 77:], embeddings[1, 77:], atol=1e-3)  # the words after them
    # (a batch of two is not bit-identical per row on a CPU: compare how much the two images differ)
    cut, kept = (abs(images[tokens][0] - images[tokens][1]).mean() for tokens in (75, 150))
    assert kept > 0.01 and kept > 10 * cut


def test_training_generates_class_images_from_class_prompts_over_75_tokens(models_root, tiny_checkpoint, one_image):
    """Through the trainer: two concepts whose class prompts differ only after token 75 get different class
    images with max_token_length 150, and the same ones with 75 (same seed, same first 75 tokens)."""
    from dreambooth.service.operations import create_model

    concepts = [{"instance_data_dir": str(one_image), "instance_prompt": "a photo of sks toy", "n_save_sample": 0,
                 "num_class_images_per": 1, "class_prompt": prompt, "class_infer_steps": 2}
                for prompt in _LONG_CLASS_PROMPTS]
    images = {}
    for tokens in (75, 150):
        model = create_model(f"long_class_{tokens}", tiny_checkpoint, progress=lambda m: None)
        cfg = quick_config(one_image, num_train_epochs=1, max_token_length=tokens, concepts_list=concepts,
                           save_ckpt_after=False)
        Trainer(model, cfg).run()
        images[tokens] = [_pixels(next(model.classifiers(i).glob("*.png"))) for i in (0, 1)]
    assert (images[75][0] == images[75][1]).all()
    assert abs(images[150][0] - images[150][1]).max() > 0
