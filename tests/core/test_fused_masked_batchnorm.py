"""The triton norm kernel computes what the torch kernel computes, run here through Triton's interpreter.

The interpreter executes the same kernel source on CPU tensors; tests/conftest.py turns it on for
machines without a GPU. Compiled on a GPU the kernels are checked by ``spark-bench gpu-check``
(part 1 compares the triton kernel on the GPU with the CPU)."""
import pytest
import torch
import torch.nn as nn

from tests.core_utils import random_mask, skip_unless_triton_interpreter

skip_unless_triton_interpreter()

from sparkmim.sparse import masked_batchnorm_triton as fused  # noqa: E402
from sparkmim.sparse.context import MaskContext  # noqa: E402
from sparkmim.sparse.masked_batchnorm import MaskedBatchNormFunction  # noqa: E402
from sparkmim.sparse.norms import SparseBatchNorm2d, select_norm_kernel  # noqa: E402

# 70 channels and 9x9 positions: more than one 64-wide block along each, with partial blocks
B, C, H, W, GRID = 3, 70, 9, 9, 3


def inputs(seed: int, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    active = random_mask(B, GRID, GRID, visible=4, seed=seed)
    active[1] = False  # one image entirely masked: it must add nothing to the statistics
    pixels = active.repeat_interleave(H // GRID, 2).repeat_interleave(W // GRID, 3)
    x = (torch.randn(B, C, H, W, dtype=torch.float64) * 3 + 2).to(dtype)  # non-zero under the mask
    upstream = torch.randn(B, C, H, W, dtype=torch.float64)
    return active, pixels, x, upstream


def run_function(function, x, mask, upstream, affine: bool = True, output_dtype=None):
    """Outputs and gradients of one norm; ``output_dtype``: the layer's cast of the output (and so of the
    gradient arriving) when the function computes in a wider dtype than the layer's input."""
    x = x.clone().requires_grad_()
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # parameters stay float32 under autocast
    weight = torch.linspace(0.5, 1.5, C, dtype=dtype).requires_grad_() if affine else None
    bias = torch.linspace(-1, 1, C, dtype=dtype).requires_grad_() if affine else None
    out, mean, var, count = function.apply(x, mask, weight, bias, 1e-5, None)
    (out.to(output_dtype or out.dtype).double() * upstream).sum().backward()
    grads = (x.grad, weight.grad, bias.grad) if affine else (x.grad,)
    return (out, mean, var, count) + grads


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("affine", [True, False])
def test_float64_equals_the_torch_kernel(layout, affine):
    _, pixels, x, upstream = inputs(0)
    mask = pixels.double()
    x = x.contiguous(memory_format=layout)
    expected = run_function(MaskedBatchNormFunction, x, mask, upstream, affine)
    got = run_function(fused.FusedMaskedBatchNormFunction, x, mask, upstream, affine)
    for name, a, b in zip(("out", "mean", "var", "count", "grad x", "grad weight", "grad bias"), got, expected):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert got[0].is_contiguous(memory_format=layout) and got[4].is_contiguous(memory_format=layout)
    assert torch.count_nonzero(got[0] * ~pixels) == 0 and torch.count_nonzero(got[4] * ~pixels) == 0


def test_statistics_do_not_cancel_on_a_large_mean():
    """The tile-wise merge keeps the two-pass accuracy where E[x^2] - E[x]^2 would lose every digit."""
    _, pixels, x, _ = inputs(1, torch.float32)
    x = x + 3000.0  # mean^2 / var ~ 1e6: one-pass float32 variance would be off by about 10%
    visible = pixels.float().reshape(B, H * W)
    mean, var, count = fused.masked_statistics(x, visible)
    gathered = x.double().permute(0, 2, 3, 1)[pixels.squeeze(1)]
    torch.testing.assert_close(mean.double(), gathered.mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), gathered.var(0, unbiased=False), rtol=1e-4, atol=0)
    assert count.item() == gathered.shape[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_reads_the_input_as_it_is_and_matches_the_widened_torch_kernel(dtype):
    _, pixels, x, upstream = inputs(2, dtype)
    mask = pixels.float()
    expected = run_function(MaskedBatchNormFunction, x.float(), mask, upstream, output_dtype=dtype)  # the torch kernel
    got = run_function(fused.FusedMaskedBatchNormFunction, x, mask, upstream)
    out, grad_x = got[0], got[4]
    assert out.dtype == dtype and grad_x.dtype == dtype  # no float32 copy of the activation or its gradient
    assert all(t.dtype == torch.float32 for t in got[1:4] + got[5:])
    resolution = torch.finfo(dtype).eps
    for name, a, b in (("out", out, expected[0]), ("grad x", grad_x, expected[4])):
        error = (a.float() - b).abs().max() / b.abs().max()
        assert error <= resolution, (name, error.item())  # one rounding of the float32 result
    for a, b in zip(got[1:4] + got[5:], expected[1:4] + expected[5:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(out * ~pixels) == 0 and torch.count_nonzero(grad_x * ~pixels) == 0


def test_a_layer_trains_the_same_with_either_kernel():
    active, _, x, upstream = inputs(3)
    results = {}
    for kernel in ("torch", "triton"):
        context = MaskContext()
        norm = SparseBatchNorm2d(C, context).double()
        assert select_norm_kernel(nn.Sequential(norm), kernel) == 1
        xi = x.clone().requires_grad_()
        for _ in range(2):  # two steps: the running statistics move twice
            with context.use(active):
                out = norm(xi)
            (out * upstream).sum().backward()
        results[kernel] = (out.detach(), xi.grad, norm.weight.grad, norm.running_mean, norm.running_var)
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_spark_model_trains_the_same_with_either_kernel():
    from sparkmim import build_spark

    losses, grads = {}, {}
    for kernel in ("torch", "triton"):
        torch.manual_seed(0)
        spark = build_spark("test_resnet", input_size=64, decoder_width=32).double()
        assert select_norm_kernel(spark, kernel) > 0
        images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        torch.manual_seed(1)
        loss = spark(images).loss
        loss.backward()
        losses[kernel] = loss.detach()
        grads[kernel] = torch.cat([p.grad.flatten() for p in spark.parameters() if p.grad is not None])
    torch.testing.assert_close(losses["triton"], losses["torch"], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads["triton"], grads["torch"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_each_kernel_launch_is_an_operator_whose_fake_outputs_match_the_real_ones(layout):
    """torch.compile sees the kernels only as these operators and plans memory from their fake
    implementations: a wrong shape, stride or dtype there would corrupt a compiled step."""
    active, pixels, x, upstream = inputs(5, torch.float32)
    x, grad = x.to(memory_format=layout), upstream.float().to(memory_format=layout)
    visible = pixels[:, 0].reshape(B, H * W).float()
    mean, scale, shift = torch.randn(C), torch.rand(C) + 0.5, torch.randn(C)
    launches = {fused._tile_statistics: (x, visible), fused._normalized: (x, visible, mean, scale, shift),
                fused._gradient_sums: (grad, x, visible, mean),
                fused._input_gradient: (grad, x, visible, mean, scale, shift, scale)}
    assert set(launches) == set(fused._OPERATORS)
    for launch, args in launches.items():
        results = torch.library.opcheck(fused._OPERATORS[launch], args)
        assert set(results.values()) == {"SUCCESS"}, (launch.__name__, results)


@pytest.mark.timeout(300)
def test_a_spark_model_on_the_triton_kernel_compiles_without_graph_breaks():
    """``spark-pretrain --compile --norm-kernel triton``: the whole forward traces as one graph and the
    compiled step (forward and backward) computes what the eager one does."""
    from sparkmim import build_spark

    losses, grads = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        spark = build_spark("test_resnet", input_size=64, decoder_width=32).double()
        select_norm_kernel(spark, "triton")
        images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        active = random_mask(2, 2, 2, visible=2, seed=0)
        step = lambda x, m: spark(x, m).loss  # noqa: E731
        if compiled:
            torch._dynamo.reset()
            step = torch.compile(step, fullgraph=True, backend="aot_eager")
        loss = step(images, active)
        loss.backward()
        losses[compiled] = loss.detach()
        grads[compiled] = torch.cat([p.grad.flatten() for p in spark.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-12)


def test_an_unknown_kernel_or_a_cpu_tensor_is_a_one_line_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown norm kernel 'cuda'; choose one of torch, triton"):
        select_norm_kernel(nn.Sequential(), "cuda")
    monkeypatch.delenv("TRITON_INTERPRET")
    active, _, x, _ = inputs(4)
    context = MaskContext()
    norm = SparseBatchNorm2d(C, context)
    select_norm_kernel(norm, "triton")
    with context.use(active), pytest.raises(RuntimeError, match="runs on CUDA devices, not on cpu"):
        norm(x.float())
