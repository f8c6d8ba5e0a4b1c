"""Typed, frozen configurations: types checked once at merge, one line naming the option."""
import dataclasses

import pytest
import yaml

from sparkmim.downstream_imagenet.config import FinetuneConfig, parse, resolve as resolve_finetune
from sparkmim.pretrain.config import PretrainConfig, resolve as resolve_pretrain
from sparkmim.utils.config import ConfigError


def test_values_are_checked_and_coerced_once():
    config = PretrainConfig.from_mapping({"epochs": 3, "warmup_epochs": 1, "lr": "1e-3", "input_size": [64, 96],
                                          "betas": [0.9, 1]})
    assert config.warmup_epochs == 1.0 and isinstance(config.warmup_epochs, float)
    assert config.lr == 1e-3  # YAML reads '1e-3' (no dot) as text
    assert config.input_size == [64, 96] and config.betas == [0.9, 1.0]
    assert config["epochs"] == 3 and dict(config)["model"] == "resnet50" and "seed" in config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 4  # type: ignore[misc]
    assert config.replace(epochs=5).epochs == 5 and config.epochs == 3


@pytest.mark.parametrize("values, message", [
    ({"epochs": "ten"}, "option 'epochs' must be an integer, got 'ten'"),
    ({"epochs": 2.5}, "option 'epochs' must be an integer"),
    ({"channels_last": "yes"}, "option 'channels_last' must be true or false"),
    ({"input_size": "big"}, "option 'input_size' must be an integer or a list of integers"),
    ({"micro_batch": True}, "option 'micro_batch' must be an integer or null"),
    ({"epoch": 3}, "unknown option 'epoch'"),
])
def test_wrong_types_are_one_line_naming_the_option(values, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_mapping(values)


def test_the_commands_resolve_to_typed_configs(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"lr": "2e-3", "mask_ratio": 0.75}))
    config = resolve_pretrain([str(tmp_path), "--recipe", str(recipe), "--epochs", "2"])
    assert isinstance(config, PretrainConfig) and config.lr == 2e-3 and config.mask_ratio == 0.75
    recipe.write_text(yaml.safe_dump({"batch_size": "many"}))
    with pytest.raises(ConfigError, match="option 'batch_size' must be an integer, got 'many'"):
        resolve_pretrain([str(tmp_path), "--recipe", str(recipe)])
    finetune = resolve_finetune(parse(["--model", "resnet50", "--data", "d", "--output-dir", "o"]))
    assert isinstance(finetune, FinetuneConfig) and finetune.layer_decay == 0.7 and finetune.opt == "lamb"
    with pytest.raises(ConfigError, match="option 'model_kwargs' must be a mapping"):
        resolve_finetune(parse(["--model", "resnet50", "--data", "d", "--output-dir", "o", "--model-kwargs", "[1]"]))
