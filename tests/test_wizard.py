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
    (8, 20, "v1x", True, False, dict(mixed_precision="fp16", optimizer="8bit AdamW", gradient_checkpointing=True,
                                     train_batch_size=1, gradient_accumulation_steps=4, sample_batch_size=1,
                                     use_lora=True)),
    (8, 20, "v1x", False, False, dict(optimizer="Torch AdamW", gradient_checkpointing=True, stop_text_encoder=0.0,
                                      use_ema=False)),
    (12, 5, "v2x", True, True, dict(resolution=768, sample_batch_size=2, train_batch_size=1, use_lora=False)),
    (16, 40, "v1x", True, False, dict(train_batch_size=2, gradient_accumulation_steps=4, gradient_checkpointing=False,
                                      stop_text_encoder=0.75, use_ema=False)),
    (24, 100, "v1x", True, False, dict(train_batch_size=4, gradient_accumulation_steps=2, optimizer="Torch AdamW",
                                       sample_batch_size=4, gradient_checkpointing=False, use_ema=True)),
    (24, 2, "v1x", False, False, dict(train_batch_size=2, gradient_accumulation_steps=1)),
    (24, 30, "SDXL", True, False, dict(resolution=1024, train_batch_size=1, optimizer="8bit AdamW",
                                       gradient_checkpointing=True, use_lora=False)),
    (16, 30, "SDXL", True, False, dict(use_lora=True)),
    (48, 30, "SDXL", True, False, dict(train_batch_size=4, optimizer="Torch AdamW", gradient_checkpointing=False)),
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


def test_small_vram_proposes_lora_and_says_why():
    changes, reasons = recommend(6, 10, "v1x", True, False)
    assert changes["use_lora"] is True
    why = next(line for line in reasons if line.startswith("use_lora"))
    assert "10 GB" in why and "6 GB" in why


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
