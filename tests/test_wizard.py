"""Performance Wizard: a table of (VRAM, images, model type, bnb, xformers) -> expected settings."""
import pytest

from dreambooth.errors import DreamboothError
from dreambooth.registry import FIELD_BY_NAME
from dreambooth.wizard import recommend

TABLE = [
    # vram, images, type, bnb, xf, expected subset
    (0, 10, "v1x", False, False, dict(mixed_precision="no", train_batch_size=1, gradient_accumulation_steps=2,
                                      optimizer="Torch AdamW", gradient_checkpointing=False, resolution=512,
                                      use_lora=False)),
    (None, 3, "v1x", True, False, dict(mixed_precision="no", optimizer="Torch AdamW", gradient_accumulation_steps=1)),
    # below 12 GB: the fused backward pass (bf16, accumulation 1); Adafactor below 8 GB or without bitsandbytes
    (8, 20, "v1x", True, False, dict(mixed_precision="bf16", optimizer="8bit AdamW", gradient_checkpointing=True,
                                     train_batch_size=1, gradient_accumulation_steps=1, sample_batch_size=1,
                                     fused_backward_pass=True, use_lora=False)),
    (8, 20, "v1x", False, False, dict(optimizer="Adafactor", gradient_checkpointing=True, stop_text_encoder=0.0,
                                      use_ema=False, fused_backward_pass=True)),
    (6, 20, "v1x", True, False, dict(optimizer="Adafactor", fused_backward_pass=True, mixed_precision="bf16")),
    (12, 20, "v1x", True, False, dict(optimizer="8bit AdamW", mixed_precision="fp16", gradient_accumulation_steps=4)),
    (12, 5, "v2x", True, True, dict(resolution=768, sample_batch_size=2, train_batch_size=1, use_lora=False)),
    (4, 20, "v1x", True, False, dict(use_lora=True, fused_backward_pass=True)),
    (16, 40, "v1x", True, False, dict(train_batch_size=2, gradient_accumulation_steps=4, gradient_checkpointing=False,
                                      stop_text_encoder=0.75, use_ema=False)),
    (24, 100, "v1x", True, False, dict(train_batch_size=4, gradient_accumulation_steps=2, optimizer="Torch AdamW",
                                       sample_batch_size=4, gradient_checkpointing=False, use_ema=True)),
    (24, 2, "v1x", False, False, dict(train_batch_size=2, gradient_accumulation_steps=1)),
    # SDXL: the strongest optimizer whose weights (+ gradients unless fused) + state + ~6 GB of activations fit
    (8, 30, "SDXL", True, False, dict(resolution=1024, optimizer="Adafactor", fused_backward_pass=True,
                                      mixed_precision="bf16", gradient_accumulation_steps=1,
                                      gradient_checkpointing=True, train_batch_size=1, stop_text_encoder=0.0,
                                      use_ema=False)),
    (16, 30, "SDXL", False, False, dict(optimizer="Adafactor", fused_backward_pass=True, train_batch_size=1,
                                        use_lora=True)),
    (24, 30, "SDXL", True, False, dict(resolution=1024, optimizer="8bit AdamW", fused_backward_pass=True,
                                       mixed_precision="bf16", gradient_checkpointing=True, train_batch_size=1,
                                       stop_text_encoder=0.0, sdxl_train_text_encoder=False, use_ema=False,
                                       use_lora=False)),
    (24, 30, "SDXL", False, False, dict(optimizer="Adafactor", fused_backward_pass=True, stop_text_encoder=0.75,
                                        sdxl_train_text_encoder=True, sdxl_train_text_encoder_2=False,
                                        tenc_grad_clip_norm=0.0)),
    (48, 30, "SDXL", True, False, dict(optimizer="Torch AdamW", fused_backward_pass=False, mixed_precision="fp16",
                                       gradient_checkpointing=True, train_batch_size=1,
                                       gradient_accumulation_steps=6)),
    (80, 30, "SDXL", True, False, dict(optimizer="Torch AdamW", fused_backward_pass=False,
                                       gradient_checkpointing=False, train_batch_size=2, stop_text_encoder=0.75,
                                       use_ema=True, sample_batch_size=2)),
]


@pytest.mark.parametrize("vram,images,model_type,bnb,xf,expected", TABLE)
def test_table(vram, images, model_type, bnb, xf, expected):
    changes, reasons = recommend(vram, images, model_type, bnb, xf)
    for key, value in expected.items():
        assert changes[key] == value, (key, changes)
    # every change is a registry field with a value the registry accepts, and each has a reason
    from dreambooth.config import TrainConfig
    cfg = TrainConfig()
    for key, value in changes.items():
        assert key in FIELD_BY_NAME
        cfg.set(key, value)
        assert any(key in line for line in reasons), key


def test_without_bf16_no_fused_pass_and_a_warning():
    changes, reasons = recommend(10, 20, "v1x", True, False, bf16_available=False)
    assert "fused_backward_pass" not in changes and changes["mixed_precision"] == "fp16"
    assert any(line.startswith("warning") and "bf16" in line for line in reasons)
    changes, _ = recommend(8, 20, "v1x", True, False, bf16_available=False)
    assert changes["use_lora"] is True  # no fused pass: a full fine-tune needs about 10 GB
    _, reasons = recommend(8, 20, "v1x", True, False)  # not known: assumed, with the caveat named
    assert any("RTX 30xx" in line for line in reasons)


@pytest.mark.parametrize("vram,bnb,bf16,need,advice", [(8, True, None, "16.3 GB", "8 GB, and even that is tight"),
                                                       (12, True, None, "16.3 GB", "12-16 GB"),
                                                       (16, True, None, "16.3 GB", "12-16 GB"),
                                                       (24, True, False, "26.5 GB", "12-16 GB")])
def test_sdxl_full_fine_tune_that_cannot_fit_proposes_lora(vram, bnb, bf16, need, advice):
    changes, reasons = recommend(vram, 10, "SDXL", bnb, False, bf16_available=bf16)
    line = next(line for line in reasons if "full SDXL fine-tune needs" in line)
    assert need in line and "LoRA" in line and advice in line
    assert changes["use_lora"] is True
    assert len([line for line in reasons if line.startswith("warning")]) == (1 if vram < 10 else 0)


@pytest.mark.parametrize("vram,bnb", [(24, True), (24, False), (48, True), (80, True)])
def test_sdxl_that_fits_has_no_warning(vram, bnb):
    changes, reasons = recommend(vram, 10, "SDXL", bnb, False)
    assert not any(line.startswith("warning") for line in reasons) and changes["use_lora"] is False


def test_sdxl_reasons_give_the_memory_figures():
    from dreambooth.wizard import sdxl_static_gb

    assert round(sdxl_static_gb("Torch AdamW")) == 41 and round(sdxl_static_gb("8bit AdamW")) == 26
    assert round(sdxl_static_gb("Adafactor")) == 21 and round(sdxl_static_gb("Adafactor", fused=True)) == 10
    _, reasons = recommend(24, 10, "SDXL", True, False)
    assert any(line.startswith("optimizer = 8bit AdamW, fused_backward_pass = True") and "15 GB" in line
               for line in reasons)


def test_small_vram_proposes_lora_and_says_why():
    changes, reasons = recommend(4, 10, "v1x", True, False)
    assert changes["use_lora"] is True
    why = next(line for line in reasons if line.startswith("use_lora"))
    assert "6 GB" in why and "4 GB" in why


def test_sdxl_low_vram_warns():
    _, reasons = recommend(8, 10, "SDXL", True, False)
    assert any(line.startswith("warning") for line in reasons)


@pytest.mark.parametrize("args,field", [((-1, 5), "vram_gb"), ((8, 0), "instance_data_dir"),
                                        (("x", 5), "vram_gb")])
def test_bad_input(args, field):
    with pytest.raises(DreamboothError) as info:
        recommend(*args)
    assert info.value.field == field


def test_unknown_model_type():
    with pytest.raises(DreamboothError, match="model type"):
        recommend(8, 5, "v3")


@pytest.mark.parametrize("vram,images,model_type,bnb,xf,expected", TABLE)
def test_the_proposal_passes_the_fused_backward_checks(vram, images, model_type, bnb, xf, expected):
    """Applied over settings that had the text encoder's own clip norm on, the Wizard's proposal trains."""
    from dreambooth.config import TrainConfig
    from dreambooth.train.fused_backward import check_fused_backward

    changes, _ = recommend(vram, images, model_type, bnb, xf)
    cfg = TrainConfig({"tenc_grad_clip_norm": 1.0})
    for key, value in changes.items():
        cfg.set(key, value)
    if cfg.fused_backward_pass:
        check_fused_backward(cfg, 1, cfg.mixed_precision)
