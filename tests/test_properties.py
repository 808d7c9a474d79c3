"""Property tests (hypothesis): whatever arrives as `--set` values, db_config.json contents or concepts JSON,
the result is a valid config or one line naming the field — never a traceback.

Examples per property: EXAMPLES (modest, so the file runs in seconds); the total is printed with -s.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dreambooth.cli import main
from dreambooth.config import TrainConfig, config_from_dict, load_concepts_source, load_config, save_config
from dreambooth.errors import DreamboothError
from dreambooth.registry import CONCEPT_FIELDS, FIELDS

EXAMPLES = 60
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FIELD_NAMES = [f.name for f in FIELDS]
CONCEPT_NAMES = [f.name for f in CONCEPT_FIELDS]
COUNTED = {"examples": 0}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**400, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(["1e400", "-0", "nan", "inf", "true", "3", "0.5", "[]", "{}", "\x00", "~nobody/x"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
concepts = st.lists(st.one_of(st.dictionaries(st.sampled_from(CONCEPT_NAMES + ["x"]), json_values, max_size=4),
                              json_values), max_size=3)


def one_line(error: DreamboothError) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message
    assert len(message) < 1000  # values are shortened, never echoed whole
    return message


def count():
    COUNTED["examples"] += 1


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_MODELS_DIR", str(tmp_path / "models"))
    path = tmp_path / "models" / "dreambooth" / "m"
    (path / "working").mkdir(parents=True)
    save_config(TrainConfig({"model_name": "m"}), path / "db_config.json")
    return path


@SETTINGS
@given(key=st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12)),
       value=st.one_of(st.text(max_size=60), json_values.map(json.dumps)))
def test_set_values_through_the_cli(model, capsys, key, value):
    count()
    before = (model / "db_config.json").read_text()
    code = main(["params", "m", "--set", f"{key}={value}"])
    captured = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert (model / "db_config.json").read_text() == before  # a refused value changes nothing
    else:
        cfg, _ = load_config(model / "db_config.json")  # what was saved loads back as a valid config
        cfg.concepts()


@SETTINGS
@given(data=st.one_of(st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.sampled_from(
    ["db_" + n for n in FIELD_NAMES[:20]]), st.text(max_size=10)), st.one_of(json_values, concepts), max_size=6),
    json_values))
def test_db_config_contents(model, data, capsys):
    count()
    try:
        cfg, warnings = config_from_dict(data)
    except DreamboothError as error:
        message = one_line(error)
        assert error.field is not None or "db_config.json" in message
    else:
        assert all("\n" not in w for w in warnings)
        save_config(cfg, model / "db_config.json")
        again, _ = load_config(model / "db_config.json")
        assert again.to_dict() == cfg.to_dict()
    (model / "db_config.json").write_text(json.dumps(data))
    assert main(["params", "m"]) in (0, 2)  # the CLI on the same file: a result or one line
    err = capsys.readouterr().err
    assert "Traceback" not in err and sum(line.startswith("error: ") for line in err.splitlines()) <= 1


@SETTINGS
@given(items=st.one_of(concepts, json_values), as_text=st.booleans(), noise=st.text(max_size=20))
def test_concepts_json(tmp_path, items, as_text, noise):
    count()
    text = json.dumps(items)
    if not as_text:
        (tmp_path / "concepts.json").write_text(text)
        text = str(tmp_path / "concepts.json")
    for source in (text, noise):
        try:
            found = load_concepts_source(source)
        except DreamboothError as error:
            assert error.field is not None and (error.field in one_line(error) or "concepts_list" in str(error))
        else:
            assert all(set(c.values) >= set(CONCEPT_NAMES) for c in found)


def test_report_example_count():
    print(f"\nhypothesis: {EXAMPLES} examples per property x 3 properties (this run: {COUNTED['examples']})")
