"""Both trainers word a saved run's differing options as the command line gives them."""
from sparkmim.utils.config import as_flag, option_difference


def test_each_kind_of_value_is_written_as_its_flag():
    assert as_flag("in_chans", 1) == "--in-chans 1"
    assert as_flag("linear_probe", True) == "--linear-probe"
    assert as_flag("linear_probe", False) == "no --linear-probe"
    assert as_flag("mean", None) == "no --mean"
    assert as_flag("model_kwargs", {}) == "no --model-kwargs"
    assert as_flag("model_kwargs", {"stem_width": 8, "channels": [8, 16]}) == \
        """--model-kwargs '{"channels": [8, 16], "stem_width": 8}'"""
    assert as_flag("std", [0.2, 0.3]) == "--std 0.2 0.3"


def test_only_differing_options_the_saved_run_had_are_named_in_the_order_asked():
    saved = {"decoder_width": 32, "mask_ratio": 0.6, "amp": "bf16"}
    current = {"decoder_width": 64, "mask_ratio": 0.6, "amp": "fp16", "in_chans": 1}
    assert option_difference(saved, current, ["amp", "decoder_width", "mask_ratio", "in_chans"]) == \
        ("--amp bf16, --decoder-width 32", "--amp fp16, --decoder-width 64")
    assert option_difference(saved, {**saved, "in_chans": 1}, list(current)) is None  # in_chans: not saved then
