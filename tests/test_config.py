import json

import pytest

from dreambooth.config import TrainConfig, apply_assignments, config_from_dict, load_config, save_config
from dreambooth.errors import DreamboothError
from dreambooth.registry import FIELDS, LR_SCHEDULERS
from dreambooth.store import check_model_name, model_dir

REQUIRED = [
    "num_train_epochs", "save_embedding_every", "save_preview_every", "epoch_pause_frequency", "epoch_pause_time",
    "train_batch_size", "gradient_accumulation_steps", "sample_batch_size", "gradient_set_to_none",
    "gradient_checkpointing", "max_grad_norm", "learning_rate", "lr_scheduler", "lr_warmup_steps", "lr_cycles",
    "lr_power", "learning_rate_min", "lr_scale_pos", "optimizer", "mixed_precision", "resolution", "seed",
    "half_model", "use_subdir", "save_safetensors", "concepts_list",
]


def test_registry_declares_every_required_setting_once():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert set(REQUIRED) <= set(names)
    assert len(LR_SCHEDULERS) == 9
    for field in FIELDS:
        assert field.label and field.help and field.group


@pytest.mark.parametrize("key, value, fragment", [
    ("num_train_epochs", "0", "num_train_epochs = 0 is out of range: allowed >= 1"),
    ("train_batch_size", "0", "train_batch_size = 0 is out of range"),
    ("learning_rate", "-1e-5", "learning_rate = -1e-05 is out of range: allowed > 0"),
    ("lr_scheduler", "warp", "lr_scheduler = 'warp' is out of range: allowed one of linear"),
    ("seed", "1.5", "seed = '1.5' is not a valid int"),
    ("gradient_checkpointing", "maybe", "gradient_checkpointing = 'maybe' is not a valid bool"),
    ("concepts_list", "[1]", "concepts_list[0] must be an object"),
    ("concepts_list", '[{"n_save_sample": -1}]', "concepts_list[0].n_save_sample = -1 is out of range"),
    ("no_such_thing", "1", "unknown parameter 'no_such_thing'"),
])
def test_bad_values_name_field_value_and_range(key, value, fragment):
    with pytest.raises(DreamboothError) as caught:
        apply_assignments(TrainConfig(), [f"{key}={value}"])
    assert fragment in str(caught.value)


def test_assignments_coerce_types_and_json():
    cfg = apply_assignments(TrainConfig(), ["learning_rate=5e-6", "half_model=true", "num_train_epochs=7",
                                            'concepts_list=[{"instance_data_dir": "/x", "instance_token": "ohwx"}]'])
    assert (cfg.learning_rate, cfg.half_model, cfg.num_train_epochs) == (5e-6, True, 7)
    concept = cfg.concepts()[0]
    assert concept.instance_token == "ohwx" and concept.instance_prompt == "[filewords]"


def test_older_extension_file_is_imported_and_unknown_keys_are_kept(tmp_path):
    older = {"db_learning_rate": 1e-6, "optimizer": "8Bit Adam", "num_train_epochs": 150, "tomesd": 0,
             "is_valid": True, "concepts_list": [{"instance_data_dir": "a", "is_valid": True, "weird": 1}]}
    cfg, warnings = config_from_dict(older)
    assert cfg.learning_rate == 1e-6 and cfg.optimizer == "8bit AdamW" and cfg.num_train_epochs == 150
    assert any("tomesd" in w for w in warnings) and any("weird" in w for w in warnings)
    assert not any("is_valid" in w for w in warnings)
    path = tmp_path / "db_config.json"
    save_config(cfg, path)
    assert json.loads(path.read_text())["tomesd"] == 0  # reported and written back, never dropped
    again, _ = load_config(path)
    assert again.to_dict() == cfg.to_dict()


def test_saved_files_carry_the_format_version_and_the_chain_reads_every_older_one(tmp_path):
    from dreambooth.migrations import FORMAT_KEY, FORMAT_VERSION, MIGRATIONS

    path = tmp_path / "db_config.json"
    save_config(TrainConfig({"learning_rate": 2e-6}), path)
    data = json.loads(path.read_text())
    assert data[FORMAT_KEY] == FORMAT_VERSION and len(MIGRATIONS) == FORMAT_VERSION
    cfg, warnings = load_config(path)
    assert cfg.learning_rate == 2e-6 and not warnings and FORMAT_KEY not in cfg.to_dict()
    # a file written before the version existed is version 0 and runs through the whole chain
    del data[FORMAT_KEY]
    data["db_max_grad_norm"], data["has_ema"], data["optimizer"] = 0.5, False, "AdamW"
    cfg, warnings = config_from_dict(data)
    assert cfg.learning_rate == 2e-6 and cfg.max_grad_norm == 0.5 and cfg.optimizer == "Torch AdamW"
    assert warnings == ["optimizer: 'AdamW' is now called 'Torch AdamW'"]


@pytest.mark.parametrize("version, fragment", [(99, "newer than this extension reads"),
                                               ("1", "must be a whole number"), (-1, "must be a whole number")])
def test_a_format_version_we_cannot_read_is_a_clear_error(version, fragment):
    with pytest.raises(DreamboothError, match=fragment) as caught:
        config_from_dict({"format_version": version, "learning_rate": 1e-6})
    assert caught.value.field == "format_version"


def test_concepts_file_resolves_relative_folders(tmp_path):
    (tmp_path / "imgs").mkdir()
    concepts_file = tmp_path / "concepts.json"
    concepts_file.write_text(json.dumps([{"instance_data_dir": "imgs", "instance_prompt": "ohwx"}]))
    cfg = TrainConfig({"use_concepts": True, "concepts_path": str(concepts_file)})
    assert cfg.concepts()[0].instance_data_dir == str((tmp_path / "imgs").resolve())
    inline = TrainConfig({"use_concepts": True, "concepts_path": '[{"instance_data_dir": "/abs"}]'})
    assert inline.concepts()[0].instance_data_dir == "/abs"


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", " ", "x\\y", ".hidden"])
def test_model_names_cannot_escape(name, tmp_path):
    with pytest.raises(DreamboothError, match="model name"):
        model_dir(name, root=tmp_path)


def test_good_model_name():
    assert check_model_name(" my model_v1.2 ") == "my model_v1.2"


def _readme_unsupported_keys() -> set[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = text.split("**Not supported, and why.**", 1)[1].split("\n\n", 2)[1]
    return {key for row in table.splitlines()[2:] for key in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_a_whole_older_extension_file_reports_only_the_readme_table_as_unknown():
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "older_db_config.json").read_text())
    cfg, warnings = config_from_dict(data)
    table = _readme_unsupported_keys()
    assert {"noise_scheduler", "ema_predict"} <= table
    assert set(cfg.extras) == table  # the LoRA keys included: read as the LoRA settings, or in the table
    assert sum("unknown key" in w for w in warnings) == 1  # in one line
    # the section-2 settings are read with their older meaning (and older value names)
    assert (cfg.scheduler, cfg.attention, cfg.max_token_length, cfg.sanity_seed, cfg.prior_loss_target) == \
        ("DDIM", "xformers", 75, 420420, 100)
    assert cfg.split_loss and cfg.full_mixed_precision and not cfg.input_pertubation
    assert any("input_pertubation" in w for w in warnings)
