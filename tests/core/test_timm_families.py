"""One member of every timm family that docs/coverage.md lists as working goes through SparK again:
build (with the build-time probe), a training step, and the three invariants (see
sparkmim.benchmarks.coverage.trial). The list is read from docs/coverage.json, which the coverage command
writes with the table, so a family that stops working fails here until the table says so."""
import json
from pathlib import Path

import pytest

from sparkmim.benchmarks.coverage.trial import WORKS, run_trial

COVERAGE = Path(__file__).resolve().parents[2] / "docs" / "coverage.json"
LARGE_M_PARAMS = 20.0  # members above this run behind the slow marker


def working_members():
    report = json.loads(COVERAGE.read_text())
    for family in report["families"]:
        if family["status"] != WORKS:
            continue
        trial = next(t for t in family["trials"] if t["status"] == WORKS)
        marks = [pytest.mark.slow] if family["params_m"][trial["model"]] > LARGE_M_PARAMS else []
        yield pytest.param(trial["model"], id=f"{family['module']}:{trial['model']}", marks=marks)


def test_the_table_lists_enough_families():
    summary = json.loads(COVERAGE.read_text())["summary"]
    assert summary["crashes"] == 0
    assert summary["possible_works"] >= 0.9 * summary["possible"], summary


@pytest.mark.parametrize("model", list(working_members()))
def test_family_member_works(model):
    result = run_trial(model)
    assert result.status == WORKS, result.reason


@pytest.mark.parametrize("model", list(working_members()))
def test_family_member_gets_layer_decay_for_fine_tuning(model):
    """spark-finetune's default grouping (timm's stages) spreads every working family over several layers,
    the classifier at the full lr."""
    import timm

    from sparkmim.downstream_imagenet.layer_decay import lr_scales
    from sparkmim.downstream_imagenet.weights import classifier_prefixes

    classifier = timm.create_model(model, num_classes=4)
    scales = lr_scales(classifier, 0.7)
    assert len(set(scales.values())) >= 3, sorted(set(scales.values()))
    head = [name for name in scales if name.startswith(classifier_prefixes(classifier))]
    assert head and all(scales[name] == 1.0 for name in head), head
