"""Masked statistics equal a reference that gathers the visible positions (no zero-filling)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparkmim.sparse.context import MaskContext
from sparkmim.sparse.norms import CrossProcessBatchNorm2d, SparseBatchNorm2d, SparseGroupNorm, SparseLayerNorm2d
from sparkmim.sparse.rules import VisibleMeanInput, VisibleMeanOutput
from tests.core_utils import random_mask

B, C, H, W, GRID = 3, 8, 12, 12, 3


def setup(seed: int = 0):
    torch.manual_seed(seed)
    active = random_mask(B, GRID, GRID, visible=4, seed=seed)
    context = MaskContext()
    pixels = active.repeat_interleave(H // GRID, 2).repeat_interleave(W // GRID, 3)
    x = torch.randn(B, C, H, W) * 3 + 1.5  # values under the mask are NOT zero: statistics must ignore them
    return context, active, pixels, x


def gather(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)[pixels.squeeze(1)]  # (N_visible, C)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_matches_batchnorm1d_on_visible_positions(momentum):
    context, active, pixels, x = setup()
    reference = nn.BatchNorm1d(C, momentum=momentum)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5), reference.bias.uniform_(-1, 1)
        reference.running_mean.uniform_(-1, 1), reference.running_var.uniform_(0.5, 2)
    sparse = SparseBatchNorm2d.from_dense(nn.BatchNorm2d(C, momentum=momentum), context)
    sparse.load_state_dict(reference.state_dict())
    x_sparse, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(B, C, H, W)
    for step in range(2):  # two steps: running statistics and the cumulative average both move
        with context.use(active):
            out = sparse(x_sparse)
        out_ref = reference(gather(x_ref, pixels))
        torch.testing.assert_close(gather(out, pixels), out_ref, rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(out * ~pixels) == 0
        (out * upstream).sum().backward()
        (out_ref * gather(upstream, pixels)).sum().backward()
        torch.testing.assert_close(x_sparse.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(sparse, name), getattr(reference, name), rtol=1e-6, atol=1e-6)
    sparse.eval(), reference.eval()
    with context.use(active), torch.no_grad():
        torch.testing.assert_close(gather(sparse(x), pixels), reference(gather(x, pixels)), rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_are_float32_under_bfloat16():
    context, active, _, x = setup(1)
    sparse = SparseBatchNorm2d(C, context)
    with context.use(active):
        out = sparse(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert sparse.running_mean.dtype == torch.float32


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels-last"])
def test_a_half_precision_input_trains_bit_for_bit_as_its_float32_copy(half, layout):
    """The torch kernel widens a bf16/fp16 activation inside its first product with the mask and
    narrows the output before re-masking: the results must be exactly the float32 computation's."""
    context, active, _, x = setup(7)
    x = x.to(half).contiguous(memory_format=layout)
    upstream = torch.randn(B, C, H, W).to(half)
    results = []
    for widen in (False, True):
        norm = SparseBatchNorm2d(C, context)
        with torch.no_grad():
            norm.weight.normal_(generator=torch.Generator().manual_seed(1))
            norm.bias.normal_(generator=torch.Generator().manual_seed(2))
        xi = x.clone().requires_grad_()
        with context.use(active):
            out = norm(xi.float() if widen else xi)
        out.backward(upstream.float() if widen else upstream)
        results.append((out.detach().to(half), xi.grad, norm.weight.grad, norm.bias.grad, norm.running_mean,
                        norm.running_var))
    assert results[0][0].dtype == half and results[0][1].dtype == half
    for ours, widened in zip(*results):
        assert torch.equal(ours, widened)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_groupnorm_matches_groupnorm_on_visible_positions(groups):
    context, active, pixels, x = setup(2)
    dense = nn.GroupNorm(groups, C)
    with torch.no_grad():
        dense.weight.uniform_(0.5, 1.5), dense.bias.uniform_(-1, 1)
    sparse = SparseGroupNorm(dense, context)
    with context.use(active):
        out = sparse(x)
    assert torch.count_nonzero(out * ~pixels) == 0
    for b in range(B):
        visible = x[b].permute(1, 2, 0)[pixels[b, 0]]  # (n, C)
        expected = F.group_norm(visible.t()[None, :, :, None], groups, dense.weight, dense.bias, dense.eps)
        got = out[b].permute(1, 2, 0)[pixels[b, 0]]
        torch.testing.assert_close(got, expected[0, :, :, 0].t(), rtol=1e-5, atol=1e-5)


def test_layernorm_matches_layernorm_on_visible_positions():
    context, active, pixels, x = setup(3)
    sparse = SparseLayerNorm2d(C, context)
    with torch.no_grad():
        sparse.weight.uniform_(0.5, 1.5), sparse.bias.uniform_(-1, 1)
    with context.use(active):
        out = sparse(x)
    assert torch.count_nonzero(out * ~pixels) == 0
    expected = F.layer_norm(gather(x, pixels), (C,), sparse.weight, sparse.bias, sparse.eps)
    torch.testing.assert_close(gather(out, pixels), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels-last"])
def test_layernorm_returns_the_input_layout(layout):
    context, active, pixels, x = setup(3)
    x = x.contiguous(memory_format=layout)
    with context.use(active):
        out = SparseLayerNorm2d(C, context)(x)
    assert out.is_contiguous(memory_format=layout)


def test_squeeze_excitation_pools_visible_positions_only():
    from timm.layers.squeeze_excite import SEModule
    context, active, pixels, x = setup(4)
    x = x * pixels  # inside the encoder the input of an SE block is already zero where masked
    se = SEModule(C, rd_ratio=0.5)
    se.register_forward_pre_hook(VisibleMeanInput(context))
    se.register_forward_hook(VisibleMeanOutput(context))
    with context.use(active), torch.no_grad():
        out = se(x)
    visible_mean = x.sum(dim=(2, 3), keepdim=True) / pixels.sum(dim=(2, 3), keepdim=True)
    with torch.no_grad():
        gate = se.gate(se.fc2(se.act(se.bn(se.fc1(visible_mean)))))
    torch.testing.assert_close(out, x * gate, rtol=1e-5, atol=1e-6)


def test_mask_context_upsamples_nearest_once_per_resolution():
    context = MaskContext()
    active = random_mask(2, 3, 4, visible=5, seed=5)
    with context.use(active):
        mask = context.mask(12, 16, torch.float32)
        assert context.mask(12, 16, torch.float32) is mask
        expected = active.repeat_interleave(4, 2).repeat_interleave(4, 3).float()
        torch.testing.assert_close(mask, expected)
        torch.testing.assert_close(context.mask(12, 16, torch.float32, channels_last=True), expected.permute(0, 2, 3, 1))
        with pytest.raises(ValueError, match="not a whole multiple"):
            context.mask(10, 16, torch.float32)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_cross_process_statistics_equal_single_process_on_the_whole_batch(tmp_path):
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    result_file = tmp_path / "errors.json"
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]  # the worker is imported as tests.sync_norm_worker
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    with_triton = importlib.util.find_spec("triton") is not None
    if with_triton:  # the fused kernels' cross-process statistics too, through Triton's interpreter
        env["TRITON_INTERPRET"] = "1"
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                "-m", "tests.sync_norm_worker", str(result_file)],
                               cwd=root, env=env, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-3000:]
    errors = json.loads(result_file.read_text())
    assert errors["sparse"] < 1e-5 and errors["dense"] < 1e-5, errors
    if with_triton:
        assert errors["sparse_triton"] < 1e-5 and errors["dense_triton"] < 1e-5, errors


def test_cross_process_batchnorm_alone_equals_batchnorm2d():
    torch.manual_seed(0)
    dense = nn.BatchNorm2d(C)
    reference = nn.BatchNorm2d(C)
    reference.load_state_dict(dense.state_dict())
    ours = CrossProcessBatchNorm2d.from_dense(dense)
    x = torch.randn(B, C, H, W) * 2 + 1
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_var, reference.running_var, rtol=1e-6, atol=1e-6)


def test_batchnorm_channels_last_equals_contiguous():
    context, active, _, x = setup(6)
    upstream = torch.randn(B, C, H, W)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        norm = SparseBatchNorm2d(C, context)
        xi = x.clone().contiguous(memory_format=layout).requires_grad_()
        with context.use(active):
            out = norm(xi)
        (out * upstream).sum().backward()
        results.append((out.detach(), xi.grad, norm.weight.grad, norm.running_var.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_synchronised_decoder_uses_the_sync_free_cross_process_batchnorm():
    # torch's SyncBatchNorm drops empty inputs' statistics by boolean indexing (a host-device sync per layer)
    from sparkmim import build_spark, convert_sync_batchnorm
    from sparkmim.benchmarks.perf.sync_check import record_host_syncs

    for spark in (build_spark("test_resnet", input_size=64, decoder_width=32, sync_bn=True),
                  convert_sync_batchnorm(build_spark("test_resnet", input_size=64, decoder_width=32))):
        norms = [m for m in spark.decoder.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, SparseBatchNorm2d))]
        assert norms and all(type(m) is CrossProcessBatchNorm2d for m in norms)
        images = torch.randn(2, 3, 64, 64)
        assert record_host_syncs(lambda: spark(images).loss.backward()) == {}


def test_float64_statistics_accumulate_in_float64_on_every_device():
    from sparkmim.sparse.masked_batchnorm import accumulation_dtype

    # "meta" stands in for a GPU here: any device but the CPU; float32 still accumulates in float32 there
    assert accumulation_dtype(torch.empty(2, dtype=torch.float64, device="meta")) == torch.float64
    assert accumulation_dtype(torch.empty(2, dtype=torch.float32, device="meta")) == torch.float32
    assert accumulation_dtype(torch.empty(2, dtype=torch.float32)) == torch.float64
