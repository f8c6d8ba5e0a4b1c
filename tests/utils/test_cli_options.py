"""The options both trainers take are declared once (sparkmim.utils.cli_options) and mean the same in each."""
import argparse
import os

import pytest
import yaml

from sparkmim.downstream_imagenet.config import build_parser as finetune_parser
from sparkmim.downstream_imagenet.config import parse as finetune_parse
from sparkmim.downstream_imagenet.config import resolve as finetune_resolve
from sparkmim.pretrain.config import build_parser as pretrain_parser
from sparkmim.pretrain.config import resolve as pretrain_resolve
from sparkmim.utils import cli_options
from sparkmim.utils.config import ConfigError
from sparkmim.utils.run import loader_workers

def _actions(parser: argparse.ArgumentParser) -> dict:
    return {option: action for action in parser._actions for option in action.option_strings}


def _shared_options() -> dict:
    parser = argparse.ArgumentParser(add_help=False)
    cli_options.add_shared_options(parser, log_interval_default=1, in_chans_default="3")
    return _actions(parser)


@pytest.mark.parametrize("build, log_interval", [(pretrain_parser, 10), (finetune_parser, 50)],
                         ids=["spark-pretrain", "spark-finetune"])
def test_each_trainer_takes_every_shared_option_as_declared_there(build, log_interval):
    trainer = _actions(build())
    for option, shared in _shared_options().items():
        assert option in trainer, f"{option} missing"
        mine = trainer[option]
        assert (type(mine), mine.dest, mine.type, mine.nargs, mine.choices, mine.default) == \
               (type(shared), shared.dest, shared.type, shared.nargs, shared.choices, shared.default), option
    assert f"(default {log_interval})" in trainer["--log-interval"].help  # each trainer's own default


def _finetune(tmp_path, *extra):
    return finetune_resolve(finetune_parse(["--model", "resnet18", "--data", str(tmp_path), "--output-dir",
                                            str(tmp_path / "run"), *extra]))


def test_both_trainers_take_a_gpu_by_index_and_refuse_a_misspelt_device_before_anything_runs(tmp_path):
    # spark-finetune's parser refused cuda:N, which spark-pretrain (and the device code of both) takes
    assert pretrain_resolve([str(tmp_path), "--device", "cuda:1"]).device == "cuda:1"
    assert _finetune(tmp_path, "--device", "cuda:1").device == "cuda:1"
    recipe = tmp_path / "recipe.yaml"
    for bad in ("gpu", "cuda:x", "cpu:0"):
        message = f"--device must be auto, cuda, cuda:N or cpu, got '{bad}'"
        recipe.write_text(yaml.safe_dump({"device": bad}))
        for source in (["--device", bad], ["--recipe", str(recipe)]):
            with pytest.raises(ConfigError, match=message):
                pretrain_resolve([str(tmp_path), *source])
            with pytest.raises(ConfigError, match=message):
                _finetune(tmp_path, *source)


def test_both_trainers_refuse_a_negative_worker_count_in_one_line(tmp_path):
    # spark-finetune passed it on to the DataLoader, whose ValueError ended the job with a traceback
    message = r"--workers must be 0 \(load in the training process\) or more, got -1"
    with pytest.raises(ConfigError, match=message):
        pretrain_resolve([str(tmp_path), "--workers", "-1"])
    with pytest.raises(ConfigError, match=message):
        _finetune(tmp_path, "--workers", "-1")
    assert _finetune(tmp_path).workers is None  # the default is computed where the loader is built


def test_the_default_worker_count_shares_this_process_cores_among_the_node_processes(monkeypatch):
    # spark-finetune started 8 workers on any machine (torch warns beyond the usable cores)
    usable = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None) == max(1, min(8, usable))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * usable))  # more processes than cores: one worker each
    assert loader_workers(None) == 1
    assert loader_workers(0) == 0 and loader_workers(12) == 12  # an explicit count is kept


def test_a_recipe_that_is_not_valid_yaml_is_one_line_naming_the_place(tmp_path):
    # yaml's ParserError ended both trainers with a traceback
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 3\nbase_lr: [0.1\n")
    message = rf"recipe {recipe} is not valid YAML \(line 3, column 1\): expected ',' or '\]'"
    with pytest.raises(ConfigError, match=message):
        pretrain_resolve([str(tmp_path), "--recipe", str(recipe)])
    with pytest.raises(ConfigError, match=message):
        _finetune(tmp_path, "--recipe", str(recipe))


@pytest.mark.parametrize("option, message", [
    (["--base-lr", "-0.5"], r"--base-lr must be a positive number, got -0\.5"),
    (["--weight-decay", "-0.05"], r"--weight-decay must be 0 or more, got -0\.05"),
    (["--clip-grad", "inf"], r"--clip-grad must be 0 or more, got inf"),
])
def test_both_trainers_refuse_out_of_range_optimizer_numbers_in_one_line(tmp_path, option, message):
    # a negative lr was timm's traceback; a negative decay (which grows the weights) or clip went unsaid
    with pytest.raises(ConfigError, match=message):
        pretrain_resolve([str(tmp_path), *option])
    with pytest.raises(ConfigError, match=message):
        _finetune(tmp_path, *option)
