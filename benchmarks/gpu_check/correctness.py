"""Part 1: the numbers on the device are the numbers on the CPU, and the masking holds under autocast.

- The reference-parity fixtures in float64: loss, the four feature maps and every gradient on the
  device against the same model on the CPU (different kernels, same mathematics: agreement to ~1e-12).
- Under bf16 and fp16 autocast: masked positions of every feature map are exactly zero, and changing
  the masked pixels leaves the visible features bit for bit unchanged.
- One fp16 step with a grad scaler and one bf16 step: finite, and the loss within a stated tolerance
  of the fp32 loss on the same batch, mask and weights.
Each with the torch norm kernel and, on CUDA with triton installed, again with the fused triton kernel."""
import itertools
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .failures import record_failure
from .options import CheckOptions
from .results import NO_CUDA, PartResult

FLOAT64_RTOL = 1e-9
LOSS_RTOL = {"bf16": 5e-2, "fp16": 1e-2}   # relative to the fp32 loss
# relative L2 distance of all gradients to fp32's. At initialisation BatchNorm's backward cancels much of
# the signal, so half precision lands far from fp32 even when right (CPU autocast, seed 0: test_resnet
# 0.34 bf16 / 0.11 fp16, ResNet-50 0.23 bf16; a dense timm ResNet-18 0.13 / 0.05); a wrong backward is
# 1 or more (zero gradients are exactly 1)
GRAD_RTOL = {"bf16": 0.5, "fp16": 0.5}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().item() + 1e-30
    return (actual.double() - expected.double()).abs().max().item() / scale


def _float64_run(case: dict, device: torch.device,
                 kernel: str = "torch") -> Tuple[torch.Tensor, List[torch.Tensor], Dict[str, torch.Tensor]]:
    from sparkmim.convert.reference_fixture import spark_from_reference_case
    from sparkmim.sparse.norms import select_norm_kernel

    spark = spark_from_reference_case(case).double().to(device).train()
    select_norm_kernel(spark, kernel)
    captured = {}
    handle = spark.encoder.register_forward_hook(lambda _m, _i, out: captured.setdefault("features", out))
    out = spark(case["input"].double().to(device), case["active"].to(device))
    handle.remove()
    out.loss.backward()
    grads = {n: p.grad.detach().cpu() for n, p in spark.named_parameters() if p.grad is not None}
    return out.loss.detach().cpu(), [f.detach().cpu() for f in captured["features"]], grads


def fixture_parity(options: CheckOptions, result: PartResult) -> None:
    folder = Path(options.fixtures) if options.fixtures else None
    cases = sorted(folder.glob("*.pt")) if folder and folder.is_dir() else []
    if not cases:
        result.add("reference fixtures, float64, device vs CPU", None, f"no fixtures found (--fixtures {folder})")
        return
    from sparkmim.convert.reference_fixture import load_reference_case

    for path in cases:
        case = load_reference_case(path)
        cpu = _float64_run(case, torch.device("cpu"))
        if not options.cuda:
            result.add(f"{path.stem}: float64 on the device vs CPU", None, f"{NO_CUDA} (the float64 path ran on CPU)")
            continue
        for kernel in options.norm_kernels:
            name = f"{path.stem}: float64 on the device{_with(kernel)} vs CPU (loss, features, {len(cpu[2])} gradients)"
            try:
                device = _float64_run(case, options.torch_device, kernel)
            except Exception as error:  # noqa: BLE001 - recorded; the other kernel's checks still run
                record_failure(result, name, error, options.torch_device)
                continue
            worst = max([_relative(device[0], cpu[0])] + [_relative(a, b) for a, b in zip(device[1], cpu[1])]
                        + [_relative(device[2][n], g) for n, g in cpu[2].items()])
            result.add(name, worst < FLOAT64_RTOL, f"largest relative difference {worst:.1e} (limit {FLOAT64_RTOL:.0e})")


def _with(kernel: str) -> str:
    """How a check names the norm kernel: nothing for the default (torch) kernel."""
    return "" if kernel == "torch" else f" with the {kernel} norm kernel"


def _failure_verdict(options: CheckOptions, kernel: str) -> Optional[bool]:
    """A failed autocast step: not applicable (None) for the torch kernel on a CPU, whose autocast may lack
    an op in that precision; a failure everywhere else (CUDA, or a kernel chosen because it runs here)."""
    return None if not options.cuda and kernel == "torch" else False


def _model_and_batch(options: CheckOptions, batch: int = 4):
    """(SparK in training mode on the device, its name, a batch of images, a random visible mask)."""
    from sparkmim import build_spark

    name, size, width = ("test_resnet", 64, 32) if options.quick else ("resnet50", 224, 256)
    torch.manual_seed(0)
    spark = build_spark(name, input_size=size, decoder_width=width).to(options.torch_device).train()
    h = size // spark.downsample_ratio
    active = spark.mask(batch, h, h, options.torch_device)
    return spark, name, torch.randn(batch, 3, size, size, device=options.torch_device), active


def masking_under_autocast(options: CheckOptions, result: PartResult) -> None:
    from sparkmim.sparse.context import upsample_mask

    from sparkmim.sparse.norms import select_norm_kernel

    spark, name, images, active = _model_and_batch(options)
    device = options.torch_device
    visible = upsample_mask(active, *images.shape[-2:])
    changed = torch.where(visible, images, torch.randn_like(images) * 5)
    for kernel, (label, dtype) in itertools.product(options.norm_kernels, AUTOCAST.items()):
        select_norm_kernel(spark, kernel)
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                first = spark.encoder(images, active)
                second = spark.encoder(changed, active)
        except Exception as error:  # noqa: BLE001 - recorded; the other checks still run
            record_failure(result, f"{name} {label} autocast{_with(kernel)}: the encoder runs", error,
                           device, passed=_failure_verdict(options, kernel))
            continue
        leak = max((f[~upsample_mask(active, *f.shape[-2:]).expand_as(f)]).abs().max().item() for f in first)
        moved = max((a.float() - b.float()).abs().max().item() for a, b in zip(first, second))
        where = "" if options.cuda else " (on CPU: the code path; the CUDA kernels are the point)"
        result.add(f"{name} {label} autocast{_with(kernel)}: masked positions of all 4 feature maps are exactly zero",
                   leak == 0.0, f"largest magnitude at a masked position {leak:.3g}{where}")
        result.add(f"{name} {label} autocast{_with(kernel)}: changing masked pixels leaves visible features "
                   f"unchanged", moved == 0.0, f"largest change {moved:.3g}{where}")


def _flat_gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None])


def mixed_precision_steps(options: CheckOptions, result: PartResult) -> None:
    """The loss alone hardly tells precisions apart at initialisation (it is about the targets' variance
    whatever the prediction), so the gradients are compared too: relative L2 distance to fp32's."""
    from sparkmim.pretrain.optim import build_optimizer
    from sparkmim.sparse.norms import select_norm_kernel
    from sparkmim.utils.run import grad_scaler, optimizer_step

    spark, name, images, active = _model_and_batch(options)
    device = options.torch_device
    state = {k: v.clone() for k, v in spark.state_dict().items()}
    loss = spark(images, active).loss
    loss.backward()
    reference, reference_grads = loss.item(), _flat_gradients(spark)
    for kernel, (label, dtype) in itertools.product(options.norm_kernels, AUTOCAST.items()):
        select_norm_kernel(spark, kernel)  # the fp32 reference above: the torch kernel
        spark.load_state_dict(state)
        spark.zero_grad(set_to_none=True)
        optimizer = build_optimizer(spark, lr=1e-4, betas=(0.9, 0.95), clip_grad=5.0)
        scaler = grad_scaler(label, device)  # fp16 only
        try:
            with torch.autocast(device.type, dtype=dtype):
                loss = spark(images, active).loss
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            grads = _flat_gradients(spark)
            optimizer_step(optimizer, scaler)
        except Exception as error:  # noqa: BLE001 - recorded; the other checks still run
            record_failure(result, f"{name} {label} step{_with(kernel)}: the step runs", error, device,
                           passed=_failure_verdict(options, kernel))
            continue
        value = loss.item()
        finite = torch.isfinite(loss).item() and all(torch.isfinite(p).all().item() for p in spark.parameters())
        relative = abs(value - reference) / max(abs(reference), 1e-12)
        gradient_distance = ((grads - reference_grads).norm() / reference_grads.norm().clamp(min=1e-30)).item()
        result.add(f"{name} {label} step{_with(kernel)}{' with a grad scaler' if scaler else ''}: loss and weights "
                   f"finite", finite, f"loss {value:.5f}")
        result.add(f"{name} {label} loss{_with(kernel)} within {LOSS_RTOL[label]:.0e} of fp32 (same batch, mask, "
                   f"weights)", relative < LOSS_RTOL[label],
                   f"fp32 {reference:.5f}, {label} {value:.5f}, relative {relative:.1e}")
        result.add(f"{name} {label} gradients{_with(kernel)} within {GRAD_RTOL[label]:.0e} of fp32's (relative L2 "
                   f"distance)", gradient_distance < GRAD_RTOL[label], f"{gradient_distance:.1e}")
    select_norm_kernel(spark, "torch")
    spark.load_state_dict(state)


def run(options: CheckOptions, result: PartResult) -> None:
    fixture_parity(options, result)
    masking_under_autocast(options, result)
    mixed_precision_steps(options, result)
