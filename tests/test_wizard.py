"""Performance Wizard: a table of (VRAM, images, model type, bnb, xformers) -> expected settings."""
import pytest

from dreambooth.errors import DreamboothError
from dreambooth.registry import FIELD_BY_NAME
from dreambooth.wizard import recommend

TABLE = [
    # vram, images, type, bnb, xf, expected subset
    (0, 10, "v1x", False, False, dict(mixed_precision="no", train_batch_size=1, gradient_accumulation_steps=2,
                                      optimizer="Torch AdamW", gradient_checkpointing=False, resolution=512)),
    (None, 3, "v1x", True, False, dict(mixed_precision="no", optimizer="Torch AdamW", gradient_accumulation_steps=1)),
    (8, 20, "v1x", True, False, dict(mixed_precision="fp16", optimizer="8bit AdamW", gradient_checkpointing=True,
                                     train_batch_size=1, gradient_accumulation_steps=4, sample_batch_size=1)),
    (8, 20, "v1x", False, False, dict(optimizer="Torch AdamW", gradient_checkpointing=True, stop_text_encoder=0.0,
                                      use_ema=False)),
    (12, 5, "v2x", True, True, dict(resolution=768, sample_batch_size=2, train_batch_size=1)),
    (16, 40, "v1x", True, False, dict(train_batch_size=2, gradient_accumulation_steps=4, gradient_checkpointing=False,
                                      stop_text_encoder=0.75, use_ema=False)),
    (24, 100, "v1x", True, False, dict(train_batch_size=4, gradient_accumulation_steps=2, optimizer="Torch AdamW",
                                       sample_batch_size=4, gradient_checkpointing=False, use_ema=True)),
    (24, 2, "v1x", False, False, dict(train_batch_size=2, gradient_accumulation_steps=1)),
    # SDXL: the optimizer that fits the UNet's weights + gradients + state first, then what the rest allows
    (8, 30, "SDXL", True, False, dict(resolution=1024, optimizer="Adafactor", gradient_checkpointing=True,
                                      train_batch_size=1, stop_text_encoder=0.0, use_ema=False)),
    (12, 30, "SDXL", True, False, dict(optimizer="Adafactor", train_batch_size=1, sample_batch_size=1)),
    (16, 30, "SDXL", False, False, dict(optimizer="Adafactor", gradient_checkpointing=True, train_batch_size=1)),
    (24, 30, "SDXL", True, False, dict(resolution=1024, train_batch_size=1, optimizer="Adafactor",
                                       gradient_checkpointing=True, stop_text_encoder=0.0,
                                       sdxl_train_text_encoder=False, use_ema=False)),
    (48, 30, "SDXL", True, False, dict(train_batch_size=2, optimizer="8bit AdamW", gradient_checkpointing=True,
                                       stop_text_encoder=0.75, sdxl_train_text_encoder=True,
                                       sdxl_train_text_encoder_2=False, use_ema=False, sample_batch_size=2)),
    (48, 30, "SDXL", False, False, dict(train_batch_size=1, optimizer="Torch AdamW", gradient_checkpointing=True,
                                        stop_text_encoder=0.0)),
    (80, 30, "SDXL", True, False, dict(train_batch_size=4, optimizer="8bit AdamW", gradient_checkpointing=False,
                                       use_ema=True)),
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


@pytest.mark.parametrize("vram,warned,advice", [(8, True, "8 GB, and even that is tight"), (12, True, "12-16 GB"),
                                                (16, True, "12-16 GB"), (24, False, None)])
def test_sdxl_full_fine_tune_below_24_gb_warns(vram, warned, advice):
    _, reasons = recommend(vram, 10, "SDXL", True, False)
    warnings = [line for line in reasons if line.startswith("warning")]
    assert bool(warnings) == warned
    if warned:
        assert "21 GB" in warnings[0] and "LoRA" in warnings[0] and advice in warnings[0]


def test_sdxl_reasons_give_the_memory_figures():
    from dreambooth.wizard import sdxl_static_gb

    assert round(sdxl_static_gb("Torch AdamW")) == 41 and round(sdxl_static_gb("8bit AdamW")) == 26
    _, reasons = recommend(24, 10, "SDXL", True, False)
    assert any(line.startswith("optimizer = Adafactor") and "21 GB" in line for line in reasons)


@pytest.mark.parametrize("args,field", [((-1, 5), "vram_gb"), ((8, 0), "instance_data_dir"),
                                        (("x", 5), "vram_gb")])
def test_bad_input(args, field):
    with pytest.raises(DreamboothError) as info:
        recommend(*args)
    assert info.value.field == field


def test_unknown_model_type():
    with pytest.raises(DreamboothError, match="model type"):
        recommend(8, 5, "v3")
