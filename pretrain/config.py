"""Pre-training configuration: the paper's recipe as defaults, then a recipe file, then the CLI.

Family-dependent values (LAMB betas, drop path) are left as ``None`` in the defaults and filled in
by :func:`resolve` from the model name, so a recipe or the CLI can still override them.
"""
import argparse
import logging
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from sparkmim.model import settings as spark_settings
from sparkmim.sparse.norms import NORM_KERNELS
from sparkmim.utils.config import ConfigError, TypedConfig, check_number_ranges, load_recipe, merge
from sparkmim.utils.cli_options import AMP_OPTION_CHOICES, add_shared_options
from sparkmim.utils.distributed import check_device_name
from sparkmim.utils.run import canonical_amp, check_workers
from sparkmim.utils.values import check_channel_options, check_one_normalisation

logger = logging.getLogger(__name__)

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
DEMO_RECIPE = "demo"


@dataclass(frozen=True)
class PretrainConfig(TypedConfig):
    """spark-pretrain's options; the defaults are the paper's pre-training recipe (PAPER.md,
    "Pre-training recipe"). Each type is checked once when the layers are merged."""

    data: Optional[str] = None              # folder of images (searched recursively) or text file of paths
    model: str = "resnet50"                 # any timm CNN name, or package.module:factory of a custom CNN
    input_size: Union[int, List[int]] = 224  # int or [height, width], multiples of the encoder's total stride
    mask_ratio: float = 0.6
    epochs: int = 1600
    warmup_epochs: float = 40
    batch_size: int = 4096                  # global batch, over all processes and accumulation steps
    micro_batch: Optional[int] = None       # images per process per forward; None = batch_size / world size
    accum_steps: Optional[int] = None       # or: forward passes per optimizer step
    base_lr: float = 2e-4                   # lr = base_lr * batch_size / 256
    lr: Optional[float] = None              # explicit peak lr (overrides base_lr scaling)
    warmup_start: float = 0.005             # warmup starts at this fraction of the peak lr
    final_lr: float = 0.001                 # cosine ends at this fraction of the peak lr
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    betas: Optional[List[float]] = None     # LAMB betas; None = (0.9, 0.95) ResNet-like, (0.9, 0.999) ConvNeXt
    clip_grad: float = 5.0                  # global grad-norm clip inside LAMB; 0 disables
    drop_path: Optional[float] = None       # None = the paper's per-model value (0 for models it does not list)
    decoder_width: int = 768
    densify_norm: str = "auto"
    amp: str = "off"                        # off | bf16 | fp16
    channels_last: Optional[bool] = None    # None = on for CUDA devices, off on CPU (measured: docs/benchmarks.md)
    compile: bool = False
    norm_kernel: str = "torch"              # the sparse BatchNorms' training kernel: torch | triton (fused, CUDA)
    device: str = "auto"
    workers: Optional[int] = None           # data-loading processes; None = sparkmim.utils.run.loader_workers' default
    decode_on_device: bool = False          # decode JPEGs (and crop/resize) on the training device (nvJPEG on a GPU)
    seed: int = 0
    output_dir: Optional[str] = None        # None = runs/spark_<model>
    resume: Optional[str] = None            # checkpoint path or 'auto' (the run folder's last checkpoint)
    init_weight: Optional[str] = None       # weights only: ours or the reference release files
    allow_unsafe_load: bool = False
    overwrite: bool = False                 # start from step 0 in a folder that already holds a run
    num_vis: int = 4                        # images in the reconstruction picture
    progress: bool = True                   # tqdm progress bar on rank 0
    log_interval: int = 10                  # steps between reads of the loss from the device (the host's only wait)
    tensorboard: bool = True
    in_chans: int = 3                       # input channels: 1 grayscale, N multispectral bands (the data's own values)
    mean: Optional[List[float]] = None      # per-channel normalisation in the data's own units; None = ImageNet (RGB)
    std: Optional[List[float]] = None
    norm_stats: str = "given"               # given (--mean/--std, or ImageNet for RGB) | auto (computed from the data)
    shuffle_buffer: int = 1000              # tar shards: samples each loader worker shuffles among (0: none)
    shard_index: Optional[str] = None       # tar shards: their shards.json (default: beside the shards)
    demo_images: int = 1024                 # size of the generated demo set (used when no data is given)
    demo_image_size: int = 128
    recipe: Optional[str] = None            # the recipe the run started from (a record; set by resolve)


DEFAULTS: Dict[str, Any] = PretrainConfig.defaults()

# per-model drop path from the paper
DROP_PATH = {
    "resnet50": 0.05, "resnet101": 0.08, "resnet152": 0.10, "resnet200": 0.15,
    "convnext_small": 0.2, "convnext_base": 0.3, "convnext_large": 0.4,
}
BETAS_RESNET = [0.9, 0.95]
BETAS_CONVNEXT = [0.9, 0.999]


def reads_values(config: "PretrainConfig") -> bool:
    """Whether the data is read with its own values and channels (sparkmim.utils.values) rather than
    as 8-bit RGB normalised with ImageNet's statistics."""
    return config.in_chans != 3 or config.mean is not None or config.norm_stats == "auto"


def family_betas(model: str) -> List[float]:
    """ConvNeXt-style (LayerNorm, transformer-like) models take Adam's default beta2; CNNs with BN
    take 0.95, as in the paper."""
    return list(BETAS_CONVNEXT if "convnext" in model.lower() else BETAS_RESNET)


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe by name (``resnet50``) or any YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown recipe '{name_or_path}'; shipped recipes: {', '.join(names)} "
                          "(or give the path of a YAML file)")
    return shipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-pretrain",
        description="SparK masked-modeling pre-training of a timm CNN. Without a data argument, a small "
                    "CNN is pre-trained on a generated demo set. Precedence: paper defaults < --recipe "
                    "< command-line options.")
    add = parser.add_argument_group("data").add_argument
    add("data_positional", nargs="?", metavar="DATA", default=None,
        help="image folder (searched recursively, labels ignored), a text file of paths, or tar "
             "shards: 'shards/train-{000000..000127}.tar' (local, URL or pipe:) or a folder "
             "with the shards.json of spark-data pack")
    add("--data", default=None, help="same as the positional DATA")
    add("--shuffle-buffer", type=int, default=None,
        help="tar shards: samples each loader worker shuffles among (default 1000; 0 or 1: none)")
    add("--shard-index", default=None,
        help="tar shards: their shards.json (path or URL) when it is not beside them")
    add("--decode-on-device", action=argparse.BooleanOptionalAction, default=None,
        help="workers only read files; JPEGs are decoded, cropped and resized on the training "
             "device (nvJPEG on a GPU; on a CPU device, in the training process)")
    demo = load_recipe(str(recipe_path(DEMO_RECIPE)))  # the values a plain `spark-pretrain` uses
    add("--demo-images", type=int, default=None,
        help=f"without data: the generated demo set's size (default {demo['demo_images']}, the demo recipe's; "
             f"{DEFAULTS['demo_images']} under another --recipe)")
    add("--demo-image-size", type=int, default=None,
        help=f"without data: its images' side in pixels (default {demo['demo_image_size']}; "
             f"{DEFAULTS['demo_image_size']} under another --recipe)")
    add = parser.add_argument_group("model and masking").add_argument
    add("--recipe", default=None,
        help="a shipped recipe name (resnet50, convnext_base, convnext_large_384, ...) or a YAML file")
    add("--model", default=None,
        help="timm model name (e.g. resnet50, convnext_base) or package.module:factory of a custom "
             "CNN with timm's feature API (e.g. sparkmim.models:small_resnet)")
    add("--input-size", type=int, nargs="+", default=None, metavar="PX",
        help="one size (square) or HEIGHT WIDTH; multiples of the encoder's total stride (32 for "
             "timm CNNs)")
    add("--mask-ratio", type=float, default=None, help="share of the input's patches hidden (default 0.6)")
    add("--decoder-width", type=int, default=None, help="the decoder's channels at its coarsest scale, halved by each upsampling stage "
             "(default 768)")
    add("--densify-norm", default=None, help="auto (BN for BatchNorm CNNs, LN for ConvNeXt) or a norm name the core accepts")
    add("--drop-path", type=float, default=None)
    add("--init-weight", default=None,
        help="initial weights only (our checkpoints or the reference release files)")
    add("--allow-unsafe", dest="allow_unsafe_load", action=argparse.BooleanOptionalAction, default=None,
        help="load checkpoints that need full unpickling (only for files you trust); the same flag "
             "as spark-finetune's and spark-convert's")
    add("--allow-unsafe-load", dest="allow_unsafe_load", action="store_const", const=True, default=None,
        help=argparse.SUPPRESS)  # the old spelling, removed in the next release (a warning says so)
    add_shared_options(parser, log_interval_default=PretrainConfig.log_interval,
                       in_chans_default="3")
    add = parser.add_argument_group("speed").add_argument
    add("--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the model (the first steps take minutes to compile; measured gains: "
             "docs/benchmarks.md)")
    add("--norm-kernel", default=None, choices=NORM_KERNELS,
        help="the sparse BatchNorms' training kernel: torch (any device, the default) or triton "
             "(fused kernels, CUDA devices; see docs/benchmarks.md)")
    add = parser.add_argument_group("schedule and optimizer").add_argument
    add("--epochs", type=int, default=None)
    add("--warmup-epochs", type=float, default=None,
        help="linear lr warm-up (default: the paper's 40 of 1600 epochs, i.e. 2.5%% of the run; "
             "when only --epochs is given, the recipe's warm-up is scaled by the same factor)")
    add("--base-lr", type=float, default=None, help="lr = base_lr * batch_size / 256")
    add("--lr", type=float, default=None, help="peak lr, overrides --base-lr")
    add("--weight-decay", type=float, default=None)
    add("--weight-decay-end", type=float, default=None)
    add("--betas", type=float, nargs=2, default=None)
    add("--clip-grad", type=float, default=None)
    add = parser.add_argument_group("outputs").add_argument
    add("--num-vis", type=int, default=None,
        help="images in reconstruction.png (default 4; 0: no picture)")
    add("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
        help="TensorBoard event files in the run folder (default: on when tensorboard is installed)")
    return parser


def _cli_layer(args: argparse.Namespace) -> Dict[str, Any]:
    layer = {k: v for k, v in vars(args).items() if k not in ("data_positional", "recipe")}
    if args.data_positional is not None:
        if args.data is not None and args.data != args.data_positional:
            raise ConfigError("give the data either as DATA or as --data, not both")
        layer["data"] = args.data_positional
    if args.input_size is not None:
        layer["input_size"] = args.input_size[0] if len(args.input_size) == 1 else list(args.input_size)
    if args.betas is not None:
        layer["betas"] = list(args.betas)
    return layer


def normalise_size(value: Any) -> Tuple[int, int]:
    """``224`` or ``[224]`` or ``[192, 256]`` -> (height, width)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(isinstance(v, int) for v in value):
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    raise ConfigError(f"input_size must be an integer or [height, width], got {value!r}")


def validate(config: PretrainConfig) -> None:
    """Checks that need no model: each failure is one line that says what to do."""
    spark_settings.check_mask_ratio(config.mask_ratio)
    height, width = normalise_size(config.input_size)
    if height <= 0 or width <= 0:
        raise ConfigError(f"input size must be positive, got {height}x{width}")
    if config.amp not in AMP_OPTION_CHOICES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_OPTION_CHOICES)}, got {config.amp!r}")
    check_device_name(config.device, ConfigError)
    for key in ("epochs", "batch_size", "log_interval", "micro_batch", "accum_steps"):
        if config[key] is not None and config[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {config[key]}")
    if config.shuffle_buffer < 0:
        raise ConfigError(f"shuffle_buffer must be 0 or more, got {config.shuffle_buffer}")
    check_number_ranges(config, positive=("base_lr", "lr"),
                        non_negative=("weight_decay", "weight_decay_end", "clip_grad", "warmup_start", "final_lr"))
    if config.num_vis < 0:
        raise ConfigError(f"--num-vis must be 0 (no picture) or more, got {config.num_vis}")
    check_workers(config.workers)
    if config.decoder_width <= 0:
        raise ConfigError(f"--decoder-width must be positive, got {config.decoder_width}")
    if config.betas is not None and not (len(config.betas) == 2 and all(0 <= b < 1 for b in config.betas)):
        raise ConfigError(f"--betas must be two numbers in [0, 1), got {config.betas}")
    if config.drop_path is not None and not 0 <= config.drop_path < 1:
        raise ConfigError(f"--drop-path must be in [0, 1), got {config.drop_path}")
    if not 0 <= config.warmup_epochs <= config.epochs:
        raise ConfigError(f"--warmup-epochs must be within [0, --epochs {config.epochs}], got {config.warmup_epochs}")
    validate_channels(config)


def validate_channels(config: PretrainConfig) -> None:
    """--in-chans with its normalisation (see check_channel_options), and no device decoding of such data."""
    check_channel_options(config.in_chans, config.mean, config.std, config.norm_stats)
    if reads_values(config) and config.decode_on_device:
        raise ConfigError("--decode-on-device decodes 8-bit RGB JPEGs; drop it with --in-chans, --mean/--std or "
                          "--norm-stats auto")


def check_input_size(config: PretrainConfig) -> None:
    """The input size fits the encoder: a multiple of its total stride, which the core reads from the
    model's ``feature_info`` (32 for timm CNNs, 16 for ``sparkmim.models:small_resnet``), and large enough
    that the mask leaves patches both visible and masked."""
    from sparkmim.sparse.encoder import total_stride

    height, width = normalise_size(config.input_size)
    stride = total_stride(config.model)
    try:
        spark_settings.check_input_size(height, width, stride)
    except spark_settings.InputSizeError as error:
        raise ConfigError(f"{error.problem}; use e.g. --input-size {error.suggestion[0]} {error.suggestion[1]}") from None
    try:
        spark_settings.check_mask_fits(height // stride, width // stride, config.mask_ratio)
    except spark_settings.SparKSettingError as error:
        raise ConfigError(f"--input-size {height} {width} with --mask-ratio {config.mask_ratio}: {error} "
                          f"(one patch is {stride}x{stride} px on {config.model})") from None


def resolve(argv: Optional[Sequence[str]] = None) -> PretrainConfig:
    """defaults -> recipe (or the demo recipe when no data is given) -> CLI; family values filled in;
    types checked once, then the rules that need no model."""
    args = build_parser().parse_args(argv)
    if "--allow-unsafe-load" in (sys.argv[1:] if argv is None else argv):
        logger.warning("--allow-unsafe-load is deprecated and will be removed in the next release; use --allow-unsafe")
    cli = _cli_layer(args)
    check_one_normalisation(cli)
    recipe_name = args.recipe
    if recipe_name is None and cli.get("data") is None:
        recipe_name = DEMO_RECIPE
    recipe = load_recipe(str(recipe_path(recipe_name))) if recipe_name else {}
    config = merge(DEFAULTS, recipe, cli)
    config["recipe"] = recipe_name
    if cli.get("epochs") is not None and cli.get("warmup_epochs") is None:
        # typed first, so that a recipe's 'epochs: ten' is the config's one-line error, not a traceback here
        base = PretrainConfig.from_mapping(merge(DEFAULTS, recipe))
        config["warmup_epochs"] = scaled_warmup(base.as_dict(), int(cli["epochs"]))
    model = config["model"]
    if config["betas"] is None:
        config["betas"] = family_betas(model)
    if config["drop_path"] is None:
        config["drop_path"] = DROP_PATH.get(model, 0.0)
    if config["output_dir"] is None:
        config["output_dir"] = str(Path("runs") / f"spark_{model.replace(':', '_')}")  # package.module:factory too
    config["amp"] = canonical_amp(config["amp"])
    typed = PretrainConfig.from_mapping(config)
    validate(typed)
    return typed


def scaled_warmup(base: Dict[str, Any], epochs: int) -> float:
    """The base (recipe or paper) warm-up scaled to a run of ``epochs``: 40 of 1600 epochs becomes 0.25 of 10,
    so a short run keeps the paper's shape instead of failing on a warm-up longer than itself."""
    base_epochs, base_warmup = int(base["epochs"]), float(base["warmup_epochs"])
    return base_warmup * epochs / base_epochs if base_epochs > 0 else 0.0


def peak_lr(config: PretrainConfig) -> float:
    if config.lr is not None:
        return float(config.lr)
    return float(config.base_lr) * int(config.batch_size) / 256
