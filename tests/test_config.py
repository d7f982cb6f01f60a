import pytest

from genforge import GenforgeError
from genforge.config import apply_overrides, load_config, parse_value


def test_preset_and_overrides_resolve_with_types():
    cfg, model_cfg = load_config("gpt-demo", ["model.n_layer=6", "train.lr=3e-4", "data.tokenizer=bpe",
                                              "train.betas=[0.9, 0.95]"])
    assert model_cfg.n_layer == 6 and cfg.model["n_layer"] == 6
    assert cfg.train.lr == 3e-4 and cfg.data.tokenizer == "bpe" and cfg.train.betas == (0.9, 0.95)


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(GenforgeError) as e:
        load_config("gpt-demo", ["model.n_layers=6"])
    assert "model.n_layers" in str(e.value) and "n_layer" in str(e.value) and "n_embd" in str(e.value)
    with pytest.raises(GenforgeError) as e:
        load_config("gpt-demo", ["train.max_step=6"])
    assert "train.max_step" in str(e.value) and "max_steps" in str(e.value)


def test_wrong_type_names_the_key():
    with pytest.raises(GenforgeError, match="train.max_steps"):
        load_config("gpt-demo", ["train.max_steps=lots"])
    with pytest.raises(GenforgeError, match="data.tokenizer"):
        load_config("gpt-demo", ["data.tokenizer=words"])


def test_impossible_model_settings_are_errors():
    with pytest.raises(GenforgeError, match="divisible"):
        load_config("gpt-demo", ["model.n_embd=100", "model.n_head=3"])


def test_malformed_override_and_unknown_preset():
    with pytest.raises(GenforgeError, match="key.sub=value"):
        apply_overrides({}, ["model.n_layer"])
    with pytest.raises(GenforgeError, match="unknown preset"):
        load_config("no-such-preset")


def test_parse_value_types():
    assert parse_value("6") == 6 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("runs/x") == "runs/x" and parse_value("[1, 2]") == [1, 2]
