"""The value benchmark (SparK vs scratch): its protocol end to end on generated data, and the parts whose
correctness the published table rests on (splits, evaluators, statistics, IDX reading)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkmim.benchmarks.value.cli import main as value_main
from sparkmim.benchmarks.value.data import (BenchmarkDataError, IDX_IMAGES_MAGIC, load_dataset, read_idx,
                                             write_idx)
from sparkmim.benchmarks.value.evaluators import knn_accuracy, linear_probe
from sparkmim.benchmarks.value.report import METHODS, markdown_table
from sparkmim.benchmarks.value.splits import balanced_subset, carve_validation
from sparkmim.benchmarks.value.stats import paired_comparison
from sparkmim.benchmarks.value.synthetic import write_idx_dataset
from sparkmim.tools.report import main as report_main
from sparkmim.tools.smoke_data import write_imagefolder


def _check_outputs(out: Path, fractions) -> dict:
    for name in ("results.md", "results.json", "fractions.png", "loss_curve.png", "reconstructions_test.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    for method in METHODS:
        assert set(results["frozen"][method]) >= {"knn", "linear"}
        assert 0 <= results["frozen"][method]["knn"]["test"] <= 100
        assert 0 <= results["frozen"][method]["linear"]["test"] <= 100
        for fraction in fractions:
            entry = results["finetune"][str(fraction)]
            assert entry[method]["test"]["n"] == len(entry[method]["runs"]) == 3
            assert [run["seed"] for run in entry[method]["runs"]] == [0, 1, 2]
    for fraction in fractions:
        assert len(results["finetune"][str(fraction)]["gain"]["differences"]) == 3
    assert results["settings"]["name"] == "smoke"
    assert results["pretrain"]["mask_grid"] == "4x4"
    assert len(results["pretrain"]["epoch_losses"]) == 1
    assert set(results["timing_s"]) == {"pretrain", "frozen", "finetune", "total"}
    table = (out / "results.md").read_text()
    assert "SparK − scratch" in table and "fine-tune, 10% labels" in table
    return results


def test_smoke_on_generated_idx_files_and_spark_report_shows_it(tmp_path, capsys):
    assert value_main(["--smoke", "--out", str(tmp_path / "run")]) == 0
    results = _check_outputs(tmp_path / "run", (0.1, 0.5))
    assert results["data"]["train"] == 400 and results["pretrain"]["images"] == 400
    assert "SparK pre-trained" in capsys.readouterr().out
    assert report_main([str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert "Value of pre-training (SparK vs scratch)" in report
    assert markdown_table(results) in report


def test_smoke_on_a_class_folder_data_set(tmp_path):
    data = write_imagefolder(tmp_path / "folders", per_class=24, size=40, seed=0)
    assert value_main(["--smoke", "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    results = _check_outputs(tmp_path / "run", (0.1, 0.5))
    assert results["data"]["test"] == len(list((data / "val").rglob("*.png")))
    listed = (tmp_path / "run" / "pretrain_data" / "pretrain_images.txt").read_text().split()
    assert all(Path(p).parent.parent.name == "train" for p in listed)  # the user's own files, never val/test


def test_bad_data_is_one_actionable_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert value_main(["--smoke", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train/<class>/" in err[0]


def test_the_pretraining_runs_on_the_evaluations_device_gpu_index_included(tmp_path, capsys):
    from sparkmim.benchmarks.value.presets import get_preset
    from sparkmim.benchmarks.value.protocol import pretraining_command

    command = pretraining_command(get_preset("smoke"), tmp_path / "list.txt", tmp_path / "run", torch.device("cuda", 1))
    assert command[command.index("--device") + 1] == "cuda:1"  # was "cuda": GPU 0, while the evaluations used GPU 1
    assert value_main(["--smoke", "--device", "gpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device must be auto, cuda, cuda:N or cpu, got 'gpu'" in err[0]


def _labels(per_class=(100, 80, 60)) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])[torch.randperm(sum(per_class))]


def test_validation_and_subsets_are_balanced_disjoint_and_deterministic():
    torch.manual_seed(0)
    labels = _labels()
    pool, val = carve_validation(labels, 0.1, seed=0)
    assert set(pool.tolist()).isdisjoint(val.tolist()) and pool.numel() + val.numel() == labels.numel()
    assert torch.bincount(labels[val]).tolist() == [10, 8, 6]
    subset = balanced_subset(labels, pool, 0.25, seed=3)
    assert torch.bincount(labels[subset]).tolist() == [25, 20, 15]
    assert set(subset.tolist()) <= set(pool.tolist())
    assert torch.equal(subset, balanced_subset(labels, pool, 0.25, seed=3))
    assert not torch.equal(subset, balanced_subset(labels, pool, 0.25, seed=4))
    assert torch.equal(balanced_subset(labels, pool, 1.0, seed=0), pool)
    assert torch.bincount(labels[balanced_subset(labels, pool, 0.001, seed=0)]).tolist() == [1, 1, 1]


def _toy_features(num_classes=10, per_class=60, dim=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 4
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(labels.numel(), dim, generator=generator), labels


@pytest.mark.parametrize("shuffle", [False, True], ids=["separable", "shuffled-labels"])
def test_knn_and_linear_probe_reach_100_or_chance(shuffle):
    train, train_labels = _toy_features(seed=0)
    val, val_labels = _toy_features(per_class=20, seed=0)
    test, test_labels = _toy_features(per_class=30, seed=0)
    val, test = val + torch.randn_like(val) * 0.1, test + torch.randn_like(test) * 0.1
    if shuffle:  # labels unrelated to the features: nothing to learn
        train_labels = train_labels[torch.randperm(train_labels.numel(), generator=torch.Generator().manual_seed(1))]
    knn = knn_accuracy(train, train_labels, test, test_labels, k=20)
    probe = linear_probe(train, train_labels, val, val_labels, test, test_labels, weight_decays=(1e-3, 1e-1))
    if shuffle:
        assert knn < 25 and probe["test"] < 25, (knn, probe["test"])
    else:
        assert knn > 99 and probe["test"] > 99, (knn, probe["test"])


def test_paired_comparison_matches_the_closed_form_t_test():
    result = paired_comparison([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert result["mean"] == pytest.approx(2.0) and result["wins"] == 3
    t = 2 / (1 / math.sqrt(3))
    assert result["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-6)  # Student t, 2 d.o.f.
    assert paired_comparison([1.0, 2.0], [2.0, 3.0])["wins"] == 0


def test_idx_round_trip_and_damaged_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "x-images-idx3-ubyte.gz", images)
    np.testing.assert_array_equal(read_idx(path, IDX_IMAGES_MAGIC), images)
    truncated = tmp_path / "t-images-idx3-ubyte"
    truncated.write_bytes(write_idx(tmp_path / "raw", images).read_bytes()[:-10])
    with pytest.raises(BenchmarkDataError, match="truncated"):
        read_idx(truncated, IDX_IMAGES_MAGIC)
    with pytest.raises(BenchmarkDataError, match="not an IDX file"):
        read_idx(write_idx(tmp_path / "labels", images[:, 0, 0]), IDX_IMAGES_MAGIC)


def test_idx_folder_loads_with_both_splits(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", train=30, test=20)
    data = load_dataset(str(folder), size=64)
    assert data.train.images.shape == (30, 1, 28, 28) and data.test.labels.shape == (20,)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(BenchmarkDataError, match="t10k-labels-idx1-ubyte"):
        load_dataset(str(folder), size=64)
