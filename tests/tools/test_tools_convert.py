"""spark-convert: every source layout is recognised and converted with its keys accounted for.

The source files are made here from real timm/torchvision models and real SparK models, in the
layouts our pipelines and the reference release write."""
import importlib.util
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision

from sparkmim import build_spark
from sparkmim.convert import convnext_timm_to_fb
from tests.core_utils import reference_release
from sparkmim.tools.convert import main

def our_full_checkpoint(spark, model: str, path: Path) -> Path:
    from sparkmim.pretrain.checkpointing import RunProgress, gather_rng_states, save_full

    optimizer = torch.optim.SGD(spark.parameters(), lr=0.1)
    config = {"model": model, "input_size": list(spark.input_size), "mask_ratio": spark.mask_ratio,
              "decoder_width": spark.decoder.width, "densify_norm": "auto"}
    return save_full(path, model_state=spark.state_dict(), optimizer=optimizer, scaler=None, epoch=1, step=4,
                     rng=gather_rng_states(), sampler={"step": 4}, config=config,
                     progress=RunProgress())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file per supported source layout."""
    root = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    spark = build_spark("test_resnet", input_size=64, decoder_width=32)
    our_full_checkpoint(spark, "test_resnet", root / "checkpoint_last.pth")
    torch.save(spark.encoder.model.state_dict(), root / "test_resnet_encoder_timm.pth")
    torch.save(reference_release(spark, "test_resnet", 64), root / "res_withdecoder_1kpretrained_spark_style.pth")
    resnet18 = timm.create_model("resnet18").state_dict()
    torch.save({k: v for k, v in resnet18.items() if not k.startswith("fc.")},
               root / "resnet18_1kpretrained_timm_style.pth")
    cnx = timm.create_model("test_convnext").state_dict()
    fb, _ = convnext_timm_to_fb({k: v for k, v in cnx.items() if not k.startswith("head.")})
    torch.save({"module": fb}, root / "cnx_1kpretrained_official_style.pth")
    torch.save(torchvision.models.resnet18().state_dict(), root / "torchvision_resnet18.pth")
    torch.save(torchvision.models.convnext_tiny().state_dict(), root / "torchvision_convnext_tiny.pth")
    return root


def inspect(path: Path, capsys, *extra: str) -> dict:
    assert main(["--inspect", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, fmt, model, decoder", [
    ("checkpoint_last.pth", "sparkmim-pretrain", "test_resnet", True),
    ("test_resnet_encoder_timm.pth", "timm", "test_resnet", False),
    ("res_withdecoder_1kpretrained_spark_style.pth", "reference-withdecoder-spark-style", "test_resnet", True),
    ("resnet18_1kpretrained_timm_style.pth", "timm", "resnet18", False),
    ("cnx_1kpretrained_official_style.pth", "facebookresearch-convnext", "test_convnext", False),
    ("torchvision_resnet18.pth", "timm", "resnet18", False),
    ("torchvision_convnext_tiny.pth", "torchvision-convnext", "convnext_tiny", False),
])
def test_inspect_recognises_each_layout(files, capsys, name, fmt, model, decoder):
    facts = inspect(files / name, capsys)
    assert (facts["format"], facts["model"], facts["has_decoder"], facts["fits_model"]) == (fmt, model, decoder, True)


@pytest.mark.parametrize("name, model", [
    ("checkpoint_last.pth", "test_resnet"), ("res_withdecoder_1kpretrained_spark_style.pth", "test_resnet"),
    ("cnx_1kpretrained_official_style.pth", "test_convnext"), ("torchvision_resnet18.pth", "resnet18"),
])
def test_to_timm_loads_into_timm_with_only_the_head_missing(files, tmp_path, capsys, name, model):
    target = tmp_path / "out.pth"
    assert main([str(files / name), str(target), "--to", "timm", "--check"]) == 0
    out = capsys.readouterr().out
    assert "check      ok" in out and "errors     none" in out
    state = torch.load(target, weights_only=True)
    net = timm.create_model(model)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("fc.", "head.")) for k in missing), missing


def test_converted_values_are_the_source_values(files, tmp_path):
    """torchvision ConvNeXt -> timm: same forward output as torchvision's own model."""
    torch.manual_seed(0)
    source = torchvision.models.convnext_tiny().eval()
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    assert main([str(tmp_path / "tv.pth"), str(tmp_path / "timm.pth"), "--to", "timm"]) == 0
    net = timm.create_model("convnext_tiny").eval()
    state = torch.load(tmp_path / "timm.pth", weights_only=True)
    net.load_state_dict({**state, "head.fc.weight": source.classifier[2].weight,
                         "head.fc.bias": source.classifier[2].bias})
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(images), source(images), rtol=1e-4, atol=1e-4)


def test_report_lists_dropped_keys_of_a_full_checkpoint(files, tmp_path, capsys):
    assert main([str(files / "checkpoint_last.pth"), str(tmp_path / "enc.pth"), "--to", "timm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == [] and report["converted"] == len(torch.load(tmp_path / "enc.pth", weights_only=True))
    assert any(k.startswith("decoder.") for k in report["dropped"])
    assert any(k.startswith("mask_tokens.") for k in report["dropped"])


def test_to_sparkmim_imports_the_reference_whole_model(files, tmp_path, capsys):
    target = tmp_path / "spark_weights.pth"
    assert main([str(files / "res_withdecoder_1kpretrained_spark_style.pth"), str(target), "--to", "sparkmim",
                 "--check"]) == 0
    out = capsys.readouterr().out
    assert "check      ok: loaded into a sparkmim SparK(test_resnet)" in out
    assert "dropped    4 keys: config, imn_m, imn_s, norm_black" in out  # the decoder is kept
    payload = torch.load(target, weights_only=True)
    assert payload["format"] == "sparkmim-weights" and payload["config"]["model"] == "test_resnet"
    assert payload["config"]["input_size"] == 64 and payload["config"]["decoder_width"] == 32
    assert inspect(target, capsys)["format"] == "sparkmim-weights"


def test_to_sparkmim_keeps_the_architecture_arguments_it_was_given(tmp_path, capsys):
    # a reference whole model of a custom-width ResNet: the written file must rebuild it (its own --check, spark-viz)
    kwargs = {"channels": [8, 16, 32, 64]}
    torch.manual_seed(0)
    spark = build_spark("resnet18", input_size=64, decoder_width=32, encoder_kwargs=kwargs)
    torch.save(reference_release(spark, "resnet18", 64), tmp_path / "custom_withdecoder.pth")
    target = tmp_path / "whole.pth"
    assert main([str(tmp_path / "custom_withdecoder.pth"), str(target), "--to", "sparkmim", "--model", "resnet18",
                 "--model-kwargs", json.dumps(kwargs), "--check"]) == 0
    assert "check      ok: loaded into a sparkmim SparK(resnet18)" in capsys.readouterr().out
    assert torch.load(target, weights_only=True)["config"]["encoder_kwargs"] == kwargs
    facts = inspect(target, capsys)
    assert (facts["model"], facts["fits_model"]) == ("resnet18", True)


def test_a_misspelt_model_or_argument_is_one_line_with_a_suggestion(files, tmp_path, capsys):
    source = str(files / "resnet18_1kpretrained_timm_style.pth")
    assert main([source, str(tmp_path / "out.pth"), "--to", "timm", "--model", "resnet_18"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "spark-convert: error: unknown timm model 'resnet_18'; did you mean resnet18")
    assert main([source, str(tmp_path / "out.pth"), "--to", "timm", "--model-kwargs", '{"chanels": [8]}']) == 2
    assert capsys.readouterr().err.strip().startswith("spark-convert: error: resnet18 takes no argument 'chanels'")
    facts = inspect(files / "res_withdecoder_1kpretrained_spark_style.pth", capsys, "--model", "my_resnet")
    assert facts["fits_model"] is False and facts["problems"][0].startswith("unknown timm model 'my_resnet'")
    assert not (tmp_path / "out.pth").exists()


def test_a_model_other_than_the_one_the_file_records_is_named_as_the_culprit(files, tmp_path, capsys):
    assert main([str(files / "checkpoint_last.pth"), str(tmp_path / "out.pth"), "--to", "timm", "--model", "resnet18"]) == 1
    assert ("the weights do not fit timm 'resnet18' (model from --model; the file itself records 'test_resnet' in "
            "the checkpoint's config; leave --model out)") in capsys.readouterr().err
    # a name the file does not record (a plain timm state dict) leaves the message as it was
    assert main([str(files / "test_resnet_encoder_timm.pth"), str(tmp_path / "out.pth"), "--to", "timm",
                 "--model", "resnet18"]) == 1
    assert "(model from --model): " in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_a_target_that_cannot_be_a_file_is_one_line_before_the_conversion(files, tmp_path, capsys):
    source = str(files / "resnet18_1kpretrained_timm_style.pth")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    assert main([source, str(tmp_path / "folder"), "--to", "timm"]) == 2  # a traceback from the final rename
    assert (f"spark-convert: error: DST {tmp_path / 'folder'} is a folder; give a file name, e.g. "
            f"{tmp_path / 'folder' / 'resnet18_1kpretrained_timm_style.pth'}") in capsys.readouterr().err
    assert main([source, str(tmp_path / "a_file" / "x.pth"), "--to", "timm"]) == 2
    assert f"DST {tmp_path / 'a_file' / 'x.pth'}: {tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    assert not any((tmp_path / "folder").iterdir()) and (tmp_path / "a_file").read_text() == "keep me"


def test_unknown_key_is_an_error_naming_it(files, tmp_path, capsys):
    state = torch.load(files / "resnet18_1kpretrained_timm_style.pth", weights_only=True)
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    assert main([str(tmp_path / "odd.pth"), str(tmp_path / "out.pth"), "--to", "timm", "--model", "resnet18"]) == 1
    assert "layer9.0.conv1.weight" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
    # without --model, weights that match no known model must not be written blindly either
    assert main([str(tmp_path / "odd.pth"), str(tmp_path / "out.pth"), "--to", "timm"]) == 1
    assert "pass --model" in capsys.readouterr().err


def test_unknown_convnext_key_is_reported(files, tmp_path, capsys):
    fb = torch.load(files / "cnx_1kpretrained_official_style.pth", weights_only=True)["module"]
    fb["stages.0.0.extra_scale"] = torch.ones(3)
    torch.save(fb, tmp_path / "odd_cnx.pth")
    assert main([str(tmp_path / "odd_cnx.pth"), str(tmp_path / "out.pth"), "--to", "timm"]) == 1
    assert "stages.0.0.extra_scale" in capsys.readouterr().err


def test_unsafe_file_needs_the_explicit_flag(files, tmp_path, capsys):
    state = torch.load(files / "resnet18_1kpretrained_timm_style.pth", weights_only=True)
    torch.save({"state_dict": state, "args": argparse_namespace()}, tmp_path / "unsafe.pth")
    assert main([str(tmp_path / "unsafe.pth"), str(tmp_path / "out.pth"), "--to", "timm"]) == 2
    assert "--allow-unsafe" in capsys.readouterr().err
    assert main([str(tmp_path / "unsafe.pth"), str(tmp_path / "out.pth"), "--to", "timm", "--allow-unsafe"]) == 0


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=0.1)  # an arbitrary class: weights-only unpickling refuses it


def test_to_d2_writes_a_detectron2_pkl(files, tmp_path, capsys):
    target = tmp_path / "r18.pkl"
    assert main([str(files / "torchvision_resnet18.pth"), str(target), "--to", "d2"]) == 0
    with target.open("rb") as handle:
        payload = pickle.load(handle)
    assert payload["matching_heuristics"] is True
    assert isinstance(payload["model"]["res2.0.conv1.weight"], np.ndarray)
    assert len(payload["model"]) == 120  # 20 convs x (weight + 5 BN tensors), classifier dropped
    capsys.readouterr()
    assert inspect(target, capsys)["format"] == "detectron2-pkl"
    assert main([str(files / "cnx_1kpretrained_official_style.pth"), str(tmp_path / "x.pkl"), "--to", "d2"]) == 2
    assert "ResNets" in capsys.readouterr().err


def test_d2_check_loads_into_mask_rcnn(tmp_path, capsys):
    pytest.importorskip("detectron2", reason="Detectron2 is not installed (installed from source); --check "
                                             "for d2 cannot load into Mask R-CNN here")
    torch.save(timm.create_model("resnet50").state_dict(), tmp_path / "r50.pth")
    assert main([str(tmp_path / "r50.pth"), str(tmp_path / "r50.pkl"), "--to", "d2", "--check"]) == 0
    assert "check      ok: loaded into Detectron2 Mask R-CNN R50-FPN" in capsys.readouterr().out


def test_check_without_the_framework_is_a_distinct_exit_status(tmp_path, capsys):
    if importlib.util.find_spec("detectron2") is not None:
        pytest.skip("Detectron2 is installed here: --to d2 --check really loads the file")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    assert main([str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl"), "--to", "d2", "--check"]) == 3
    captured = capsys.readouterr()
    assert (tmp_path / "r18.pkl").is_file() and "check      skipped" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("spark-convert: ") and "not checked" in captured.err


def test_to_mmdet_uses_the_mmdetection_converter(files, tmp_path, capsys):
    target = tmp_path / "cnx_mmdet.pth"
    status = main([str(files / "cnx_1kpretrained_official_style.pth"), str(target), "--to", "mmdet", "--check"])
    captured = capsys.readouterr()
    assert "per-stage output norms" in captured.out
    checked = re.search(r"check      (ok|skipped)", captured.out)
    assert checked and status == {"ok": 0, "skipped": 3}[checked[1]]  # 3: written but not verified
    if status == 3:
        assert "was written but not checked" in captured.err
    state = torch.load(target, weights_only=True)["state_dict"]
    assert "backbone.downsample_layers.0.0.weight" in state
    capsys.readouterr()
    facts = inspect(target, capsys)  # was read as a timm state dict of no known model
    assert (facts["format"], facts["tensors"], facts["converted_by"]) == ("mmdet", len(state), "sparkmim")
    assert main([str(target), str(tmp_path / "back.pth"), "--to", "timm"]) == 2
    assert "holds MMDetection backbone weights (an output format); convert the original" in capsys.readouterr().err
    assert main([str(files / "torchvision_resnet18.pth"), str(tmp_path / "x.pth"), "--to", "mmdet"]) == 2
    dropped = tmp_path / "cnx_no_norm3.pth"
    assert main([str(files / "cnx_1kpretrained_official_style.pth"), str(dropped), "--to", "mmdet",
                 "--final-norm", "drop"]) == 0
    assert not any(k.startswith("backbone.norm3.") for k in torch.load(dropped, weights_only=True)["state_dict"])


def test_the_framework_commands_are_spark_convert_with_a_fixed_target(files, tmp_path, capsys):
    from sparkmim.downstream_d2.convert import main as d2_main
    from sparkmim.downstream_mmdet.convert import main as mmdet_main

    source = files / "torchvision_resnet18.pth"
    assert d2_main([str(source), str(tmp_path / "a.pkl")]) == 0
    assert main([str(source), str(tmp_path / "b.pkl"), "--to", "d2"]) == 0
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()
    assert "--to d2" in capsys.readouterr().out
    # the target is checked before the (possibly large) source is read
    assert d2_main([str(tmp_path / "missing.pth"), str(tmp_path / "a.pth")]) == 2
    assert "'.pkl'" in capsys.readouterr().err
    assert mmdet_main([str(source), str(tmp_path / "c.pth")]) == 2  # a ResNet has no mmpretrain ConvNeXt
    assert capsys.readouterr().err.startswith("spark-mmdet-convert: error: --to mmdet converts ConvNeXts")


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pth"), str(tmp_path / "o.pth"), "--to", "timm"]) == 2
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert main(["--inspect", str(tmp_path / "text.pth")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main([str(tmp_path / "o.pth")])  # no target, no --to


def test_console_entry_point_runs(files):
    result = subprocess.run([sys.executable, "-m", "sparkmim.tools.convert", "--inspect",
                             str(files / "resnet18_1kpretrained_timm_style.pth")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"model\s+resnet18", result.stdout)
