"""The key-table engine every converter is built on: each key renamed, dropped or refused, else named."""
import pytest
import torch

from sparkmim.convert import KeyAccountingError
from sparkmim.convert.key_rules import Drop, KeyTable, Refuse, RefusedKeysError, Rename, name_rule


def odd_only(match):
    return f"odd.{match[1]}" if int(match[1]) % 2 else None


TABLE = KeyTable("toy", renames=(Rename(r"a\.(\d+)", r"b.\1", lambda v: v * 2), Rename(r"n\.(\d+)", odd_only)),
                 drops=(Drop(r"head\..*", "classifier"),), refusals=(Refuse(r"weird\..*", "no place for it"),),
                 required=(("b.0", "no a.0: is this a toy?"),))


def test_rename_transform_drop_and_report():
    out, report = TABLE.convert({"a.0": torch.ones(2), "n.3": torch.zeros(1), "head.w": torch.zeros(1)})
    assert sorted(out) == ["b.0", "odd.3"] and torch.equal(out["b.0"], torch.full((2,), 2.0))
    assert report.renamed == {"a.0": "b.0", "n.3": "odd.3"} and report.dropped == ["head.w"]


def test_a_function_target_that_declines_leaves_the_key_unknown():
    with pytest.raises(KeyAccountingError, match=r"unknown keys for a toy conversion: n\.2"):
        TABLE.convert({"a.0": torch.ones(1), "n.2": torch.ones(1)})


def test_refusal_names_the_keys_and_the_reason():
    with pytest.raises(RefusedKeysError, match=r"no place for it \(keys weird\.x\)"):
        TABLE.convert({"a.0": torch.ones(1), "weird.x": torch.ones(1)})


def test_required_target_key_and_collisions():
    with pytest.raises(RefusedKeysError, match="is this a toy"):
        TABLE.convert({"a.1": torch.ones(1)})
    collide = KeyTable("toy", renames=(Rename(r"(x|y)", "z"),))
    with pytest.raises(KeyAccountingError, match="'y' and 'x' both map to 'z'"):
        collide.convert({"x": torch.ones(1), "y": torch.ones(1)})


def test_values_must_be_tensors():
    with pytest.raises(KeyAccountingError, match="value of 'a.0' is a str"):
        TABLE.convert({"a.0": "text"})


def test_name_rules_read_both_ways_and_match_only_their_fields():
    forward = name_rule("stages.{s}.{b}.pwconv{n}.{p}", "stages.{s}.blocks.{b}.mlp.fc{n}.{p}")
    back = name_rule("stages.{s}.blocks.{b}.mlp.fc{n}.{p}", "stages.{s}.{b}.pwconv{n}.{p}")
    assert forward.apply("stages.2.11.pwconv1.bias") == "stages.2.blocks.11.mlp.fc1.bias"
    assert back.apply("stages.2.blocks.11.mlp.fc1.bias") == "stages.2.11.pwconv1.bias"
    for other in ("stages.2.11.pwconv3.bias", "stages.x.11.pwconv1.bias", "stages.2.11.pwconv1.gamma",
                  "stages.2.11.pwconv1.bias.extra", "stages_2.11.pwconv1.bias"):
        assert forward.apply(other) is None, other
