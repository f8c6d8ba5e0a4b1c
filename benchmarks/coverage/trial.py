"""One model through SparK: build (with the build-time probe), one training step, then the invariants.

The invariants are the ones the sparse encoder promises for every model it accepts:

1. masked positions are exactly zero in every feature map (training mode);
2. changing masked pixels leaves the visible features unchanged, bit for bit (evaluation mode);
3. with every patch visible the sparse encoder equals the dense timm model (evaluation mode, up to
   float32 rounding: the largest difference relative to the largest value must stay below 1e-4).

Run as ``python -m sparkmim.benchmarks.coverage.trial MODEL`` it prints one JSON line, so the survey can
run every model in its own process, with a time limit, without one model's crash taking the others.
"""
import json
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

RELATIVE_TOLERANCE = 1e-4
WORKS, REFUSED, FAILS, CRASHES, TIMEOUT = "works", "refused", "fails", "crashes", "timeout"


class InvariantViolation(AssertionError):
    """A model the encoder accepted breaks one of the invariants."""


@dataclass
class TrialResult:
    model: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    dense_error: Optional[float] = None  # invariant 3, relative

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _grid_mask(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """About half of the patches visible, at least one visible and one masked per image."""
    generator = torch.Generator().manual_seed(seed)
    cells = height * width
    visible = max(1, min(cells - 1, cells // 2))
    keep = torch.rand(batch, cells, generator=generator).argsort(dim=1)[:, :visible]
    return torch.zeros(batch, cells, dtype=torch.bool).scatter_(1, keep, True).view(batch, 1, height, width)


def _masked_values(feature: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    scale_h, scale_w = feature.shape[-2] // active.shape[-2], feature.shape[-1] // active.shape[-1]
    visible = active.repeat_interleave(scale_h, 2).repeat_interleave(scale_w, 3)
    return feature.masked_select(~visible.expand_as(feature))


def check_invariants(spark, dense: torch.nn.Module, size: int, seed: int = 0) -> float:
    """Raise :class:`InvariantViolation` naming the broken invariant; return invariant 3's relative error."""
    encoder, batch = spark.encoder, 2
    in_chans, ratio = encoder.in_chans, encoder.downsample_ratio
    grid = size // ratio
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, in_chans, size, size, generator=generator)
    active = _grid_mask(batch, grid, grid, seed)
    spark.train()
    with torch.no_grad():
        for level, feature in enumerate(spark.encode(images, active)):
            leaked = torch.count_nonzero(_masked_values(feature, active)).item()
            if leaked:
                raise InvariantViolation(f"invariant 1: {leaked} non-zero masked values at feature level {level}")
    spark.eval()
    pixels_visible = active.repeat_interleave(ratio, 2).repeat_interleave(ratio, 3)
    altered = torch.where(pixels_visible, images, 5 * torch.randn(images.shape, generator=generator))
    with torch.no_grad():
        for level, (a, b) in enumerate(zip(spark.encode(images, active), spark.encode(altered, active))):
            if not torch.equal(a, b):
                raise InvariantViolation(f"invariant 2: masked pixels change visible features at level {level} "
                                         f"(by up to {(a - b).abs().max().item():.3g})")
        everything = torch.ones_like(active)
        sparse = spark.encode(images, everything)
        dense.load_state_dict(spark.encoder.model.state_dict())  # the running statistics moved above
        dense.eval()
        reference = dense.forward_intermediates(images, indices=4, intermediates_only=True)
    worst = 0.0
    for level, (a, b) in enumerate(zip(sparse, reference)):
        error = ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
        worst = max(worst, error)
        if not error <= RELATIVE_TOLERANCE:
            raise InvariantViolation(f"invariant 3: all-visible features differ from the dense model at level "
                                     f"{level} (relative error {error:.2g})")
    return worst


def training_step(spark, size: int) -> None:
    """One SGD step on random images; the loss and every gradient must be finite."""
    spark.train()
    images = torch.randn(2, spark.encoder.in_chans, size, size, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(spark.parameters(), lr=1e-3)
    output = spark(images)
    output.loss.backward()
    if not torch.isfinite(output.loss):
        raise InvariantViolation(f"training step: loss {output.loss.item()}")
    bad = [name for name, param in spark.named_parameters() if param.grad is not None and
           not torch.isfinite(param.grad).all()]
    if bad:
        raise InvariantViolation(f"training step: non-finite gradient in {bad[0]}")
    optimizer.step()


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f" (at {frames[-1].name}, {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""


def trial_size(stride: int) -> int:
    """Two mask patches per side (at least 64 px): the smallest input with visible and masked patches."""
    return max(64, 2 * stride)


def run_trial(name: str, size: Optional[int] = None) -> TrialResult:
    """Build, train a step, check; never raises: the outcome is the status."""
    from sparkmim import build_spark
    from sparkmim.sparse.encoder import create_timm_encoder, total_stride
    from sparkmim.sparse.rules import UnsupportedLayerError
    from sparkmim.utils.errors import UserError, describe_error, first_line

    start = time.perf_counter()
    torch.manual_seed(0)
    try:
        stride = total_stride(name)
        size = size or trial_size(stride)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the decoder halves its width once per doubling of the stride: 32 channels for stride 32
            spark = build_spark(name, input_size=size, decoder_width=max(32, stride))
            dense = create_timm_encoder(name)
        training_step(spark, size)
        error = check_invariants(spark, dense, size)
        return TrialResult(name, WORKS, seconds=time.perf_counter() - start, dense_error=error)
    except InvariantViolation as violation:
        return TrialResult(name, FAILS, str(violation), time.perf_counter() - start)
    except (UserError, UnsupportedLayerError) as refusal:
        return TrialResult(name, REFUSED, first_line(refusal), time.perf_counter() - start)
    except Exception as error:  # a raw crash: exactly what the survey is there to find
        return TrialResult(name, CRASHES, f"{describe_error(error, limit=200)}{_where(error)}",
                           time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, size = argv[0], int(argv[1]) if len(argv) > 1 else None
    print(run_trial(name, size).to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
