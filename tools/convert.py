"""``spark-convert``: one weight converter for every checkpoint layout the project meets.

``spark-convert SRC DST --to {timm,d2,mmdet,sparkmim} [--model NAME] [--check]`` recognises the
source (our full or encoder-only checkpoints, the reference releases, plain timm or torchvision
state dicts), converts it with the project's converters, prints the key report and exits non-zero
when a key cannot be accounted for. ``spark-convert --inspect FILE`` says what a file is.

Exit status: 0 done; 1 key accounting failed (unknown/missing keys, wrong model) or ``--check``
failed; 2 the input cannot be used (missing file, unsafe pickle, not a checkpoint, a model the target
cannot hold); 3 the file was written but ``--check`` could not load it (the target framework is not
installed): not verified.

``spark-d2-convert`` and ``spark-mmdet-convert`` are this command with ``--to d2`` / ``--to mmdet``
fixed (:func:`alias_main`); every conversion is a key table of :mod:`sparkmim.convert`.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from sparkmim.convert import KeyAccountingError
from sparkmim.convert.detectron2 import check_d2_target, timm_resnet_to_d2, write_pkl
from sparkmim.convert.formats import SourceInfo, WEIGHTS_FORMAT, check_against_model_any_channels, recognise
from sparkmim.convert.key_rules import RefusedKeysError
from sparkmim.convert.mmdet import FINAL_NORM_CHOICES, timm_convnext_to_mmpretrain, write_checkpoint
from sparkmim.convert.mmdet import is_converted as is_mmdet_checkpoint
from sparkmim.sparse.encoder import EncoderSpecError
from sparkmim.utils.checkpoint import UnsafeCheckpointError, load_file, save_atomic
from sparkmim.utils.errors import UserError, describe_error, run_command
from sparkmim.utils.logging_setup import setup_command_logging
from sparkmim.utils.output_paths import check_output_file

from . import checks
from .pkl_files import load_numpy_pickle

NOT_CHECKED = 3  # exit status: written, but --check could not run

logger = logging.getLogger("sparkmim.tools.convert")

TARGETS = ("timm", "d2", "mmdet", "sparkmim")
SPARK_BUILD_KEYS = ("input_size", "mask_ratio", "decoder_width", "densify_norm", "encoder_kwargs")  # build_spark's


class UsageError(UserError, ValueError):
    """The input cannot be used as given; reported in one line, exit status 2."""


def build_parser(prog: str = "spark-convert", fixed_to: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of ``spark-convert``; ``fixed_to`` builds an alias whose target format is fixed."""
    description = ("Convert SparK / timm / torchvision / reference-release weights between the formats "
                   "of timm, Detectron2, MMDetection and sparkmim, accounting for every key.")
    if fixed_to:
        description += f" Same as 'spark-convert SRC DST --to {fixed_to}'."
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("source", nargs="?", type=Path, help="checkpoint to convert (.pth)")
    parser.add_argument("target", nargs="?", type=Path, help="file to write")
    if fixed_to:
        parser.set_defaults(to=fixed_to)
    else:
        parser.add_argument("--to", choices=TARGETS, help="target format: timm (encoder state dict), d2 "
                            "(Detectron2 .pkl, ResNet), mmdet (MMDetection ConvNeXt backbone), sparkmim "
                            "(whole SparK model when the source has a decoder, else the encoder)")
    if fixed_to in (None, "mmdet"):
        parser.add_argument("--final-norm", choices=FINAL_NORM_CHOICES, default="norm3",
                            help="--to mmdet: where the classifier-side final norm goes (default: norm3, the last "
                                 "per-stage output norm, as in mmpretrain's checkpoints)")
    else:
        parser.set_defaults(final_norm="norm3")
    parser.add_argument("--model", default=None, help="timm model name of the weights (default: from the "
                        "file's config, else found by matching the weights against common timm models)")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help='extra timm.create_model arguments the weights were made with, e.g. \'{"channels": [8, 16, 32, 64]}\'')
    parser.add_argument("--check", action="store_true",
                        help="load the result into the target framework's model (when it is installed)")
    parser.add_argument("--inspect", type=Path, metavar="FILE", help="say what FILE is and exit")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="load a file that needs full (code-executing) unpickling; only for files you trust")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def load_source(path: Path, allow_unsafe: bool) -> Any:
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise UsageError(f"file not found: {path}")
    if path.suffix == ".pkl":
        try:
            return load_numpy_pickle(path)
        except Exception as error:  # a .pkl that is not a plain numpy pickle
            if not allow_unsafe:
                raise UsageError(f"{path} is not a plain pickle of arrays ({error}); pass --allow-unsafe only "
                                 "if you trust it") from error
    try:
        return load_file(path, allow_unsafe=allow_unsafe)
    except UnsafeCheckpointError as error:
        raise UsageError(str(error).replace("pass the allow-unsafe option", "pass --allow-unsafe")) from error
    except Exception as error:
        raise UsageError(f"cannot read {path} as a checkpoint ({describe_error(error)})") from error


def _model_kwargs(text: Optional[str]) -> Dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--model-kwargs is not valid JSON ({error.msg}): {text}") from error
    if not isinstance(value, dict):
        raise UsageError("--model-kwargs must be a JSON object, e.g. '{\"drop_path_rate\": 0.1}'")
    return value


def _parameters(state: Dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def describe(path: Path, obj: Any, info: Optional[SourceInfo]) -> Dict[str, Any]:
    """The facts ``--inspect`` prints."""
    if isinstance(obj, dict) and obj.get("matching_heuristics") is not None and isinstance(obj.get("model"), dict):
        return {"file": str(path), "format": "detectron2-pkl",
                "description": "Detectron2 weights (.pkl, numpy arrays; MODEL.WEIGHTS)",
                "tensors": len(obj["model"]), "author": obj.get("__author__")}
    if is_mmdet_checkpoint(obj):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        return {"file": str(path), "format": "mmdet",
                "description": "MMDetection backbone weights ('backbone.' keys under 'state_dict'; a detector's "
                               "init_cfg checkpoint)",
                "tensors": len(obj["state_dict"]), "converted_by": meta.get("converted_by"),
                "notes": list(meta.get("notes") or [])}
    assert info is not None
    facts = {"file": str(path), "format": info.format, "description": info.description,
             "model": info.model, "model_from": info.model_from or None,
             "encoder_tensors": len(info.encoder), "encoder_parameters": _parameters(info.encoder),
             "has_decoder": info.has_decoder, "classifier_keys": info.classifier,
             "dropped_keys": len(info.report.dropped)}
    if isinstance(obj, dict) and obj.get("format") == "sparkmim-pretrain":
        facts.update({"epoch": obj.get("epoch"), "step": obj.get("step")})
    if info.spark_config:
        facts["config"] = {k: v for k, v in info.spark_config.items()
                           if k in ("model", "input_size", "mask_ratio", "decoder_width", "densify_norm", "reference")}
    if info.model:
        try:
            problems = check_against_model_any_channels(info)
        except EncoderSpecError as error:  # e.g. a release's 'arch' that is no timm name: say so, inspect the rest
            problems = [str(error)]
        facts["fits_model"] = not problems
        if problems:
            facts["problems"] = problems
    facts["in_chans"] = info.in_chans
    targets = ["timm", "sparkmim"]
    rgb = info.in_chans == 3  # the detection transfers are RGB only
    if rgb and info.model and info.model.startswith("resnet") and not info.model.endswith("d"):
        targets.append("d2")
    if rgb and info.model and "convnext" in info.model:
        targets.append("mmdet")
    facts["convertible_to"] = targets
    return facts


def print_facts(facts: Dict[str, Any]) -> None:
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        print(f"{key:<{width}}  {value}")


def require_model(info: SourceInfo) -> str:
    """Every encoder key must belong to a known timm model: the accounting for timm-named files."""
    if not info.model:
        raise KeyAccountingError("cannot tell which timm model these weights belong to (the file has no config "
                                 "and matches none of the common models); pass --model NAME")
    problems = check_against_model_any_channels(info)
    if problems:
        note = f"; {info.override_note}" if info.override_note else ""
        raise KeyAccountingError(f"the weights do not fit timm '{info.model}' (model from {info.model_from}{note}): "
                                 + "; ".join(problems))
    return info.model


def write_timm(info: SourceInfo, target: Path, args: Optional[argparse.Namespace] = None) -> Dict[str, Any]:
    save_atomic({k: v.detach().cpu() for k, v in info.encoder.items()}, target)
    return {"written": str(target), "tensors": len(info.encoder), "converted": len(info.encoder)}


def write_sparkmim(info: SourceInfo, target: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Whole-model weights when the source has a decoder (reference release or ours), else the
    encoder-only checkpoint (which is a timm state dict)."""
    if not info.has_decoder:
        logger.info("the source has no decoder: writing the encoder-only checkpoint (timm names)")
        return write_timm(info, target)
    info.report.dropped = list(info.spark_dropped)  # the whole model is kept
    config = dict(info.spark_config)
    if "reference" in config:
        from sparkmim.convert import build_kwargs_from_reference_config

        config = build_kwargs_from_reference_config(config.pop("reference"))
    config["model"] = info.model
    payload = {"format": WEIGHTS_FORMAT, "model": {k: v.detach().cpu() for k, v in info.spark_state.items()},
               "config": {k: config[k] for k in ("model", "input_size", "mask_ratio", "decoder_width",
                                                 "densify_norm", "mean", "std") if config.get(k) is not None}}
    if info.model_kwargs:  # the architecture's own arguments (--model-kwargs) and a channel count other than 3
        payload["config"]["encoder_kwargs"] = dict(info.model_kwargs)
    save_atomic(payload, target)
    return {"written": str(target), "tensors": len(payload["model"]), "converted": len(payload["model"])}


def write_d2(info: SourceInfo, target: Path, args: argparse.Namespace) -> Dict[str, Any]:
    conversion = timm_resnet_to_d2(info.encoder)
    info.report.dropped.extend(conversion.dropped)
    write_pkl(conversion, target)
    return {"written": str(target), "tensors": len(conversion.model), "converted": len(conversion.renamed)}


def write_mmdet(info: SourceInfo, target: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """mmpretrain ConvNeXt names under ``backbone.`` (mmengine's ``Pretrained`` initialiser layout)."""
    conversion = timm_convnext_to_mmpretrain(info.encoder, final_norm=args.final_norm)
    info.report.dropped.extend(conversion.dropped)
    info.report.notes.extend(conversion.notes)
    write_checkpoint(conversion, target)
    return {"written": str(target), "tensors": len(conversion.backbone), "converted": len(conversion.renamed)}


def run_check(to: str, info: SourceInfo, target: Path) -> checks.CheckResult:
    if to in ("timm", "sparkmim"):
        if to == "sparkmim" and info.has_decoder:
            return check_sparkmim(target)
        return checks.check_timm(info.encoder, info.model, info.model_kwargs)
    if to == "d2":
        return checks.check_d2(target, info.model)
    from sparkmim.utils.checkpoint import unwrap_state_dict

    return checks.check_mmdet(unwrap_state_dict(load_file(target)), info.model)


def check_sparkmim(target: Path) -> checks.CheckResult:
    """Rebuild the SparK model from the written file's config and load every tensor."""
    from sparkmim import build_spark
    from sparkmim.convert import load_state_dict_checked

    payload = load_file(target)
    config = payload["config"]
    spark = build_spark(config["model"], **{k: v for k, v in config.items() if k in SPARK_BUILD_KEYS})
    try:
        load_state_dict_checked(spark, payload["model"], f"{target}",
                                allowed_missing=["encoder.model." + k for k in spark.encoder.unused_state_keys])
    except KeyAccountingError as error:
        return checks.CheckResult("failed", str(error))
    return checks.CheckResult("ok", f"loaded into a sparkmim SparK({config['model']}) built from the file's config")


def check_target_path(args: argparse.Namespace) -> None:
    """Before anything is loaded: a target the chosen format cannot be written to."""
    if args.to == "d2":
        try:
            check_d2_target(args.target)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.target.exists() and args.source.exists() and args.target.resolve() == args.source.resolve():
        raise UsageError(f"refusing to overwrite the source checkpoint {args.source}; choose another target")
    # a folder, or a path under a file, failed in the atomic rename after the whole conversion
    check_output_file(args.target, "DST", example=f"{args.source.stem}.{'pkl' if args.to == 'd2' else 'pth'}")


def convert(args: argparse.Namespace) -> int:
    check_target_path(args)
    obj = load_source(args.source, args.allow_unsafe)
    if isinstance(obj, dict) and obj.get("matching_heuristics") is not None:
        raise UsageError(f"{args.source} is a Detectron2 .pkl (an output format); convert the original checkpoint")
    if is_mmdet_checkpoint(obj):
        raise UsageError(f"{args.source} holds MMDetection backbone weights (an output format); convert the "
                         "original checkpoint")
    try:
        info = recognise(obj, args.model)
    except ValueError as error:
        raise UsageError(f"{args.source} is not a checkpoint this tool knows ({error})") from error
    info.model_kwargs.update(_model_kwargs(args.model_kwargs))
    logger.info("%s: %s", args.source, info.description)
    model = require_model(info)
    if args.to in ("d2", "mmdet") and info.in_chans != 3:
        raise UsageError(f"--to {args.to}: the detection transfer takes RGB (3-channel) encoders, this one takes "
                         f"{info.in_chans} channel(s); fine-tune it with spark-finetune --in-chans {info.in_chans} or "
                         "convert it --to timm")
    if args.to == "d2" and not model.startswith("resnet"):
        raise UsageError(f"--to d2 converts ResNets (Detectron2's ResNet backbone); this file is a {model}")
    if args.to == "mmdet" and "convnext" not in model:
        raise UsageError(f"--to mmdet converts ConvNeXts (mmpretrain's ConvNeXt backbone); this file is a {model}")
    args.target.parent.mkdir(parents=True, exist_ok=True)
    writer = {"timm": write_timm, "d2": write_d2, "mmdet": write_mmdet, "sparkmim": write_sparkmim}[args.to]
    written = writer(info, args.target, args)
    report = {"source": str(args.source), "format": info.format, "model": model, "model_from": info.model_from,
              "to": args.to, "dropped": sorted(set(info.report.dropped)), "errors": [], **written,
              "notes": [n for n in info.report.notes if "per-stage" in n]}
    status = 0
    if args.check:
        result = run_check(args.to, info, args.target)
        report["check"] = {"status": result.status, "message": result.message}
        status = {"failed": 1, "skipped": NOT_CHECKED}.get(result.status, 0)
    print_report(report, args.json)
    if status == NOT_CHECKED:
        print(f"{args.prog}: {args.target} was written but not checked: {result.message}", file=sys.stderr)
    return status


def print_report(report: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    dropped: List[str] = report["dropped"]
    lines = [f"source     {report['source']}  [{report['format']}]",
             f"model      {report['model']}  (from {report['model_from']})",
             f"target     {report['written']}  [--to {report['to']}, {report['tensors']} tensors]",
             f"converted  {report['converted']} keys",
             f"dropped    {len(dropped)} keys" + (f": {', '.join(dropped[:10])}" + (" ..." if len(dropped) > 10 else "")
                                                 if dropped else ""),
             "errors     none"]
    lines += [f"note       {note}" for note in report.get("notes", [])]
    if "check" in report:
        lines.append(f"check      {report['check']['status']}: {report['check']['message']}")
    print("\n".join(lines))


def inspect(args: argparse.Namespace) -> int:
    obj = load_source(args.inspect, args.allow_unsafe)
    info = None
    if not (isinstance(obj, dict) and obj.get("matching_heuristics") is not None) and not is_mmdet_checkpoint(obj):
        try:
            info = recognise(obj, args.model)
        except ValueError as error:
            raise UsageError(f"{args.inspect} is not a checkpoint this tool knows ({error})") from error
        info.model_kwargs.update(_model_kwargs(args.model_kwargs))
    facts = describe(args.inspect, obj, info)
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
    else:
        print_facts(facts)
    return 0


def main(argv: Optional[Sequence[str]] = None, prog: str = "spark-convert", fixed_to: Optional[str] = None) -> int:
    parser = build_parser(prog, fixed_to)
    args = parser.parse_args(argv)
    args.prog = prog
    setup_command_logging(logging.WARNING)
    if args.inspect is None and (args.source is None or args.target is None or args.to is None):
        parser.error("give SRC DST --to FORMAT, or --inspect FILE" if not fixed_to else "give SRC DST, or --inspect FILE")
    body = (lambda: inspect(args)) if args.inspect is not None else (lambda: convert(args))
    # a part the target cannot hold is unusable input (2); any other key accounting failure is 1
    return run_command(prog, body, statuses={RefusedKeysError: 2, KeyAccountingError: 1})


def alias_main(to: str, prog: str, argv: Optional[Sequence[str]] = None) -> int:
    """``prog SRC DST [options]`` = ``spark-convert SRC DST --to <to> [options]``."""
    return main(argv, prog=prog, fixed_to=to)


if __name__ == "__main__":
    sys.exit(main())
