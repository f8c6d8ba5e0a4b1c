"""No host-device synchronisation in a SparK training step, checked at the dispatcher on CPU.

The recorder must see syncs where they exist (the naive reference's ``nonzero``, ``.item()``,
boolean indexing), else an empty report would prove nothing."""
import pytest
import torch

from sparkmim.benchmarks import cli as bench
from sparkmim.benchmarks.perf.step import StepConfig
from sparkmim.benchmarks.perf.sync_check import HOST_DATA, HostSyncRecorder, record_host_syncs, step_sync_report

TINY = dict(size=64, batch=2, decoder_width=64, threads=1)


def test_recorder_sees_item_nonzero_and_boolean_indexing():
    x = torch.randn(4, 3)
    keep = x[:, 0] > 0
    counts = record_host_syncs(lambda: (x.sum().item(), x.nonzero(), x[keep], bool(x.abs().sum() > 0)))
    assert counts["aten._local_scalar_dense"] == 2  # .item() and bool()
    assert counts["aten.nonzero"] >= 1
    assert counts["aten.index with a boolean mask"] == 1
    assert record_host_syncs(lambda: (x * 2).sum(dim=0).argsort()) == {}


def test_recorder_sees_tensors_made_from_host_data():
    # on a GPU torch.tensor(value, device=...) is a blocking copy from pageable host memory
    x = torch.randn(4, 3)
    counts = record_host_syncs(lambda: (x * torch.tensor(0.1, device=x.device), torch.as_tensor([1.0, 2.0])))
    assert counts == {HOST_DATA: 2}
    assert record_host_syncs(lambda: (x * 0.1, torch.full((), 0.1, device=x.device), torch.zeros(2))) == {}


def test_host_resident_scalars_are_not_counted():
    counter = torch.tensor(3.0)
    recorder = HostSyncRecorder(host_resident=[counter])
    with recorder:
        counter.item()
        torch.tensor(1.0).item()
    assert dict(recorder.counts) == {"aten._local_scalar_dense": 1, HOST_DATA: 1}  # the new tensor and its read


@pytest.mark.parametrize("model", ["resnet18", "convnext_atto"])
def test_spark_training_step_has_no_host_sync(model):
    report = step_sync_report("spark", StepConfig(model=model, **TINY))
    assert report["syncing_ops"] == {}, report


def test_naive_reference_synchronises_in_every_norm():
    report = step_sync_report("naive", StepConfig(model="resnet18", **TINY))
    assert report["syncing_ops"].get("aten.nonzero", 0) >= 20  # one per BatchNorm forward, at least


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.set_sync_debug_mode)")
def test_spark_step_passes_cuda_sync_debug_mode():
    report = step_sync_report("spark", StepConfig(model="resnet18", device="cuda", **TINY))
    assert report["cuda_sync_debug_error"] is None, report


def test_cli_reports_each_variant_and_passes_for_a(capsys):
    args = ["sync", "--model", "resnet18", "--size", "64", "--batch", "2", "--decoder-width", "64", "--threads", "1"]
    assert bench.main(args + ["--variants", "a,c"]) == 0
    printed = capsys.readouterr().out
    assert "| (a) sparkmim SparK | none |" in printed and "aten.nonzero x" in printed
