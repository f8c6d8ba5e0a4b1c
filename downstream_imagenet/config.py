"""Options of ``spark-finetune``: defaults, the per-model recipe, a user recipe, then the command line.

The per-model recipes in ``recipes/`` hold the paper's fine-tuning table. A model without one gets
``recipes/default.yaml`` (the paper's ResNet-50 recipe without stochastic depth, which not every timm
family has), and the run logs that it did; ``--recipe`` and the command line override it as usual.
"""
import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sparkmim.convert.formats import SPARKMIM_FULL, SPARKMIM_WEIGHTS, configured_in_chans
from sparkmim.model.settings import InputSizeError, check_input_size
from sparkmim.sparse.encoder import check_model_name
from sparkmim.utils.checkpoint import recorded_config
from sparkmim.utils.config import ConfigError, TypedConfig, check_number_ranges, load_recipe, merge
from sparkmim.utils.cli_options import AMP_OPTION_CHOICES, add_shared_options
from sparkmim.utils.distributed import check_device_name
from sparkmim.utils.errors import describe_error
from sparkmim.utils.run import canonical_amp, check_workers
from sparkmim.utils.values import check_channel_options, check_one_normalisation

from .layer_decay import GROUPINGS

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "default"    # recipes/default.yaml: for models without a recipe of their own
LINEAR_PROBE_RECIPE = "linear_probe"
DATA_OPTIONS = ("data", "train_dir", "val_dir")  # where the images are: given together, replaced together


@dataclass(frozen=True)
class FinetuneConfig(TypedConfig):
    """spark-finetune's options. The paper's per-model table (``None`` here) comes from the model's built-in
    recipe (``recipes/default.yaml`` for a model without one), ``--recipe`` or the command line. Types are
    checked once."""

    # what to run
    model: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data: Optional[str] = None
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    weights: Optional[str] = None
    output_dir: Optional[str] = None
    resume: Optional[str] = None
    eval_only: bool = False
    checkpoint: Optional[str] = None
    eval_ema: bool = False
    linear_probe: bool = False
    allow_unsafe: bool = False
    overwrite: bool = False             # train again from the start in a folder that already holds a run
    # the paper's table (from the per-model recipe)
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    warmup_epochs: Optional[float] = None
    opt: Optional[str] = None
    base_lr: Optional[float] = None
    layer_decay: Optional[float] = None
    layer_grouping: str = "auto"
    weight_decay: Optional[float] = None
    mixup: Optional[float] = None
    repeated_aug: Optional[int] = None
    drop_path: Optional[float] = None
    ema: Optional[float] = None
    # optimisation details
    opt_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    opt_eps: Optional[float] = None
    momentum: float = 0.9
    clip_grad: float = 0.0
    accum_steps: Optional[int] = None   # forward passes per optimizer step (None: one, unless micro_batch is given)
    micro_batch: Optional[int] = None   # or: images per process per forward pass
    loss: str = "softce"
    # augmentation and regularisation
    input_size: int = 224
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    auto_augment: str = "trivial"
    color_jitter: float = 0.0
    reprob: float = 0.25
    remode: str = "pixel"
    train_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_pct: float = 0.95
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    # data read with its own values (grayscale, multispectral): as spark-pretrain's options
    in_chans: Optional[int] = None      # None: the pre-training run's (config.yaml beside --weights), else 3
    mean: Optional[List[float]] = None  # per channel, in the data's units; None = the pre-training's or ImageNet's
    std: Optional[List[float]] = None
    norm_stats: str = "given"           # given | auto (computed once from the training files)
    # runtime
    amp: str = "off"
    channels_last: Optional[bool] = None  # None = on for CUDA devices, off on CPU (measured: docs/benchmarks.md)
    sync_bn: bool = True
    device: str = "auto"
    workers: Optional[int] = None      # None = sparkmim.utils.run.loader_workers' default (cores per process, <= 8)
    eval_batch_size: Optional[int] = None
    seed: int = 0
    log_interval: int = 50
    stop_after_epoch: Optional[int] = None
    progress: bool = True
    recipe: Optional[str] = None        # the --recipe file the run used (a record; set by resolve)
    model_recipe: Optional[str] = None  # the built-in recipe the run used (a record; set by resolve)


DEFAULTS: Dict[str, Any] = FinetuneConfig.defaults()

CHOICES = {
    "opt": ("adamw", "lamb", "sgd", "lars"),
    "loss": ("softce", "bce", "ce"),
    "amp": AMP_OPTION_CHOICES,
    "crop_mode": ("center", "squash", "border"),
    "remode": ("pixel", "rand", "const"),
    # what both timm's transforms and torchvision's TrivialAugmentWide take
    "interpolation": ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos"),
    "layer_grouping": GROUPINGS,
}


def model_recipe_path(model: str, input_size: Optional[int]) -> Optional[Path]:
    """The built-in recipe for ``model`` (``<model>_<size>.yaml`` first when a size is given)."""
    candidates = [f"{model}_{input_size}.yaml"] if input_size and input_size != 224 else []
    candidates.append(f"{model}.yaml")
    for name in candidates:
        if (RECIPE_DIR / name).is_file():
            return RECIPE_DIR / name
    return None


def builtin_recipes() -> List[str]:
    """The models with a recipe of their own."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if p.stem not in (DEFAULT_RECIPE, LINEAR_PROBE_RECIPE))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-finetune",
        description="ImageNet classification fine-tuning (or linear probing) of a SparK pre-trained "
                    "timm CNN, with the paper's per-model recipes and layer-wise lr decay. "
                    "Options override the recipe file, which overrides the built-in model recipe.")
    flag = dict(action=argparse.BooleanOptionalAction, default=None)
    add = parser.add_argument_group("what to fine-tune").add_argument
    add("--model", help="timm model name, e.g. resnet50, convnext_base, efficientnet_b0; built-in recipes: "
                        + ", ".join(builtin_recipes()) + "; other models get recipes/default.yaml")
    add("--model-kwargs", type=json.loads, help="extra timm.create_model arguments as JSON, e.g. "
                                               "'{\"channels\": [32, 64, 128, 256]}' (must match the pre-trained encoder)")
    add("--weights", help="pre-trained encoder: sparkmim encoder-only or full pre-training checkpoint, "
                          "or a reference *_1kpretrained_timm_style.pth / *_official_style.pth file")
    add("--allow-unsafe", help="allow full (code-executing) unpickling of trusted weight files", **flag)
    add("--recipe", help="YAML file of options (keys as in the saved config.yaml)")
    add("--linear-probe", help="frozen backbone + BatchNorm1d(affine=False) + linear head", **flag)
    add = parser.add_argument_group("data").add_argument
    add("--data", help="folder with train/ and val/ class folders (ImageNet layout)")
    add("--train-dir", help="training ImageFolder (instead of --data)")
    add("--val-dir", help="validation ImageFolder (instead of --data)")
    add_shared_options(parser, log_interval_default=FinetuneConfig.log_interval,
                       in_chans_default="the pre-training run's, from the config.yaml beside --weights, else 3")
    add = parser.add_argument_group("schedule and optimizer").add_argument
    add("--epochs", type=int)
    add("--warmup-epochs", type=float)
    add("--stop-after-epoch", type=int, help="end this job after that epoch (time-limited jobs); the "
                                            "schedule still spans --epochs; continue with --resume auto")
    add("--opt", choices=CHOICES["opt"])
    add("--base-lr", type=float, help="lr = base_lr x batch_size / 256")
    add("--layer-decay", type=float, help="layer-wise lr decay (1.0 = off; ignored with --linear-probe)")
    add("--layer-grouping", help="layers for --layer-decay: auto (the paper's table for ResNet/ConvNeXt, "
                                 "else timm's stages), paper, stages or blocks (timm's group_matcher)")
    add("--weight-decay", type=float)
    add("--opt-betas", type=float, nargs=2)
    add("--opt-eps", type=float)
    add("--momentum", type=float, help="momentum of sgd / lars")
    add("--clip-grad", type=float, help="global grad-norm clip (0 = off)")
    add = parser.add_argument_group("loss and regularisation").add_argument
    add("--loss", choices=CHOICES["loss"], help="softce: soft-target CE; bce: binary CE; ce: plain CE")
    add("--label-smoothing", type=float)
    add("--drop-path", type=float)
    add("--ema", type=float, help="EMA decay (0 = no EMA)")
    add("--sync-bn", help="SyncBatchNorm under multi-GPU torchrun", **flag)
    add = parser.add_argument_group("augmentation").add_argument
    add("--input-size", type=int)
    add("--train-scale", type=float, nargs=2, help="RandomResizedCrop scale range")
    add("--interpolation", choices=CHOICES["interpolation"])
    add("--auto-augment", help="'trivial' (TrivialAugmentWide), a timm string such as "
                               "'rand-m9-mstd0.5-inc1' (RandAugment) or 'v0', or 'none'")
    add("--color-jitter", type=float, help="colour jitter strength when auto-augment is off (0 = off)")
    add("--reprob", type=float, help="random erasing probability")
    add("--remode", choices=CHOICES["remode"])
    add("--mixup", type=float, help="mixup alpha (0 = off)")
    add("--cutmix", type=float, help="cutmix alpha (0 = off)")
    add("--mixup-prob", type=float)
    add("--mixup-switch-prob", type=float)
    add("--repeated-aug", type=int, help="repeated augmentation count (0 = off)")
    add = parser.add_argument_group("evaluation").add_argument
    add("--eval-only", help="evaluate a fine-tuned checkpoint and exit", **flag)
    add("--checkpoint", help="fine-tuned checkpoint for --eval-only (default: <output-dir>/checkpoint_best.pth; "
                             "checkpoint_best_ema.pth with --eval-ema)")
    add("--eval-ema", help="with --eval-only: evaluate the checkpoint's EMA weights", **flag)
    add("--eval-batch-size", type=int, help="evaluation batch per process (default: the training "
                                             "micro-batch; 128 with --eval-only)")
    add("--crop-pct", type=float, help="evaluation centre-crop fraction")
    add("--crop-mode", choices=CHOICES["crop_mode"])
    return parser


@dataclass(frozen=True)
class UserLayers:
    """What the user gave: the ``--recipe`` file's options and the command-line options."""
    recipe_file: Optional[str]
    recipe: Dict[str, Any]
    cli: Dict[str, Any]

    def get(self, key: str) -> Any:
        return self.cli.get(key, self.recipe.get(key))


def parse(argv: Optional[Sequence[str]] = None) -> UserLayers:
    args = vars(build_parser().parse_args(argv))
    recipe_file = args.pop("recipe")
    recipe = load_recipe(recipe_file)
    merge(DEFAULTS, recipe)  # unknown keys in the recipe file are reported here
    return UserLayers(recipe_file, recipe, {key: value for key, value in args.items() if value is not None})


def check_one_data_source(user: UserLayers) -> None:
    """--data, or --train-dir/--val-dir: with both, the folders won without a word (and --data with
    --train-dir alone ended in a traceback)."""
    if user.get("data") and (user.get("train_dir") or user.get("val_dir")):
        given = " and ".join(f"--{key.replace('_', '-')}" for key in ("train_dir", "val_dir") if user.get(key))
        raise ConfigError(f"give --data (a folder holding train/ and val/) or --train-dir and --val-dir, not "
                          f"--data with {given}")


def resolve(user: UserLayers) -> FinetuneConfig:
    """Training configuration: defaults <- model recipe (<- linear-probe recipe) <- --recipe <- CLI."""
    check_one_normalisation(user.cli)
    check_one_data_source(user)
    probe = merge(DEFAULTS, user.recipe, user.cli)
    layers, model_recipe = [], None
    if probe["model"]:
        builtin = model_recipe_path(probe["model"], probe["input_size"]) or RECIPE_DIR / f"{DEFAULT_RECIPE}.yaml"
        layers.append(load_recipe(str(builtin)))
        model_recipe = builtin.stem
    if probe["linear_probe"]:
        layers.append(load_recipe(str(RECIPE_DIR / f"{LINEAR_PROBE_RECIPE}.yaml")))
    config = merge(DEFAULTS, *layers, user.recipe, user.cli)
    config["recipe"] = user.recipe_file
    config["model_recipe"] = model_recipe
    config["amp"] = canonical_amp(config["amp"])
    fill_channels_from_pretraining(config, user)
    typed = FinetuneConfig.from_mapping(config)
    validate(typed)
    return typed


def pretraining_config(weights: Optional[str]) -> Tuple[Dict[str, Any], str]:
    """The pre-training's options for ``weights`` and where they were read: the config inside a sparkmim
    pre-training checkpoint or whole-model file (it travels with the file, wherever it is copied), else the
    config.yaml of the spark-pretrain run folder the file sits in (an encoder file); ({}, "") for neither."""
    if not weights:
        return {}, ""
    path = Path(weights).expanduser()
    inside = recorded_config(path, formats=(SPARKMIM_FULL, SPARKMIM_WEIGHTS))
    if configured_in_chans(inside) is not None:
        return inside, "its config"
    beside = path.parent / "config.yaml"
    if not beside.is_file():
        return {}, ""
    try:
        saved = load_recipe(str(beside))
    except (ConfigError, OSError):
        return {}, ""
    return (saved, "its config.yaml") if "mask_ratio" in saved and "in_chans" in saved else ({}, "")


def fill_channels_from_pretraining(config: Dict[str, Any], user: UserLayers) -> None:
    """Data read with its own values fine-tunes like it pre-trained: --in-chans, --mean and --std default to
    the pre-training's (see :func:`pretraining_config`). A contradicting --in-chans is refused (the encoder's
    stem could not load)."""
    saved, where = pretraining_config(config.get("weights"))
    channels = configured_in_chans(saved)
    if channels is None:
        if config["in_chans"] is None:
            config["in_chans"] = 3
        return
    if config["in_chans"] is not None and int(config["in_chans"]) != channels:
        raise ConfigError(f"--in-chans {config['in_chans']} contradicts the pre-training of {config['weights']} "
                          f"({channels} channel(s), {where}); drop --in-chans or give other weights")
    config["in_chans"] = channels
    if user.get("mean") is None and user.get("norm_stats") is None and saved.get("mean") is not None:
        config["mean"], config["std"] = list(saved["mean"]), list(saved["std"])


def resolve_eval(user: UserLayers, trained: Dict[str, Any]) -> FinetuneConfig:
    """Evaluation configuration: the checkpoint's own configuration (so the evaluation transform
    matches the one used during training) <- --recipe <- CLI. Data given by the user replaces all of the
    training's data options: a saved --val-dir would otherwise win over a new --data."""
    check_one_data_source(user)
    known = {key: value for key, value in trained.items() if key in DEFAULTS}
    if any(user.get(key) for key in DATA_OPTIONS):
        known = {key: value for key, value in known.items() if key not in DATA_OPTIONS}
    config = merge(DEFAULTS, known, user.recipe, user.cli)
    config["recipe"] = user.recipe_file
    config["eval_only"] = True
    config["amp"] = canonical_amp(config["amp"])
    if config["in_chans"] is None:  # a checkpoint written before the option existed: RGB
        config["in_chans"] = 3
    resolved = FinetuneConfig.from_mapping(config)
    check_input_size_fits(resolved)
    check_number_ranges(resolved, positive=("eval_batch_size",))
    return resolved


def reads_values(config: FinetuneConfig) -> bool:
    """Whether files are read with their own values and channels rather than as 8-bit RGB (spark-pretrain's rule)."""
    return (config.in_chans or 3) != 3 or config.mean is not None or config.norm_stats == "auto"


def classifier_kwargs(config: FinetuneConfig) -> Dict[str, Any]:
    """timm.create_model's extra arguments: --model-kwargs, and in_chans when it is not 3."""
    kwargs = dict(config.model_kwargs)
    if (config.in_chans or 3) != 3:
        kwargs["in_chans"] = config.in_chans
    return kwargs


def _encoder_stride(model: str, model_kwargs: Dict[str, Any]) -> int:
    """The core's reading of the model's total stride (32 when the name is unknown: the model check
    reports that one)."""
    from sparkmim.sparse.encoder import EncoderSpecError, total_stride

    try:
        return total_stride(model, model_kwargs)
    except (EncoderSpecError, TypeError, ValueError):
        return 32


def check_input_size_fits(config: FinetuneConfig) -> None:
    """--input-size a multiple of the model's total stride, as in pre-training, for training and --eval-only alike."""
    try:
        check_input_size(config.input_size, config.input_size, _encoder_stride(config.model, config.model_kwargs))
    except InputSizeError as error:
        raise ConfigError(f"{error.problem}; use e.g. --input-size {error.suggestion[0]}") from None


def check_auto_augment(policy: Optional[str]) -> None:
    """A policy timm cannot build is refused before any data is read (timm's assertion was a traceback after
    the run folder was claimed): timm builds the transform on a tiny input to check it."""
    if policy in (None, "", "none", "trivial"):
        return
    from timm.data import create_transform

    try:
        create_transform(input_size=32, is_training=True, auto_augment=policy)
    except (AssertionError, KeyError, ValueError, IndexError) as error:
        raise ConfigError(f"--auto-augment {policy!r} is not a policy timm knows ({describe_error(error)}); use "
                          "'trivial', 'none', a RandAugment string such as 'rand-m9-mstd0.5-inc1', 'augmix-m5-w3' "
                          "or 'v0'") from None


def validate(config: FinetuneConfig) -> None:
    """Refuse incomplete or inconsistent configurations with one actionable line."""
    if not config.model:
        raise ConfigError("--model is required (a timm model name such as resnet50)")
    if not config.output_dir:
        raise ConfigError("--output-dir is required")
    if not config.data and not (config.train_dir and config.val_dir):
        raise ConfigError("give --data (with train/ and val/) or both --train-dir and --val-dir")
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {config[key]!r}")
    check_device_name(config.device, ConfigError)
    check_workers(config.workers)
    check_model_name(config.model)  # before any data is read; the hint names the closest timm models
    check_input_size_fits(config)
    if config.batch_size <= 0 or config.epochs <= 0:
        raise ConfigError("batch_size and epochs must be positive")
    for key in ("accum_steps", "micro_batch"):
        if config[key] is not None and config[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {config[key]}")
    if config.warmup_epochs < 0 or config.warmup_epochs > config.epochs:
        raise ConfigError(f"--warmup-epochs {config.warmup_epochs} is not within [0, --epochs {config.epochs}]; give "
                          "--warmup-epochs with a short run (the recipe's warm-up does not shrink with --epochs)")
    check_channel_options(config.in_chans, config.mean, config.std, config.norm_stats)
    check_number_ranges(config, positive=("base_lr", "log_interval", "eval_batch_size", "stop_after_epoch"),
                        non_negative=("weight_decay", "clip_grad", "mixup", "cutmix", "repeated_aug"),
                        probability=("reprob", "mixup_prob", "mixup_switch_prob"))
    if not 0 < config.crop_pct <= 1:
        raise ConfigError(f"--crop-pct must be in (0, 1] (the centre crop's share of the resized image), got "
                          f"{config.crop_pct}")
    check_auto_augment(config.auto_augment)
    if config.drop_path is not None and not 0 <= config.drop_path < 1:
        raise ConfigError(f"--drop-path must be in [0, 1), got {config.drop_path}")
    if config.checkpoint or config.eval_ema:
        raise ConfigError("--checkpoint and --eval-ema choose what --eval-only evaluates: add --eval-only (pre-trained "
                          "weights to fine-tune go to --weights)")
    if not 0 < config.layer_decay:
        raise ConfigError(f"layer_decay must be positive, got {config.layer_decay}")
    if not 0 <= config.ema < 1:
        raise ConfigError(f"ema must be in [0, 1) (0 = off), got {config.ema}")
