"""spark-bench paired: alternating steps in one process, ratios per round (no speed assertion)."""
import json

import pytest

from sparkmim.benchmarks import cli as bench
from sparkmim.benchmarks.perf.paired import measure_paired
from sparkmim.benchmarks.perf.step import StepConfig

TINY = StepConfig(model="resnet18", size=64, batch=2, decoder_width=64, threads=1, warmup=1)


def test_rounds_alternate_and_ratios_come_from_each_round():
    report = measure_paired(["spark", "dense", "naive"], TINY, rounds=3)
    rounds = report["rounds"]
    assert len(rounds) == 3
    assert list(rounds[0]) == ["spark", "dense", "naive"]
    assert list(rounds[1]) == ["naive", "dense", "spark"]  # odd rounds run in reverse
    ratios = report["summary"]["ratios"]
    expected = sorted(r["spark"] / r["dense"] for r in rounds)[1]
    assert ratios["a/b"]["median"] == pytest.approx(expected)
    assert ratios["a/b"]["n"] == 3 and ratios["c/a"]["n"] == 3
    assert ratios["a/b"]["q1"] <= ratios["a/b"]["median"] <= ratios["a/b"]["q3"]
    fastest = min(r["spark"] for r in rounds) / min(r["dense"] for r in rounds)
    assert ratios["a/b fastest steps"]["median"] == pytest.approx(fastest)
    assert all(t > 0 for r in rounds for t in r.values())


def test_cli_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "paired.json"
    code = bench.main(["paired", "--model", "resnet18", "--size", "64", "--batch", "2", "--decoder-width", "64",
                       "--threads", "1", "--warmup", "0", "--rounds", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(a) sparkmim SparK" in printed and "(b) dense floor" in printed and "| a/b |" in printed
    assert "(c) naive reference" not in printed  # default variants: a and b
    report = json.loads(out.read_text())
    assert set(report["summary"]["variants"]) == {"spark", "dense"}


def test_zero_rounds_is_a_clear_error(capsys):
    code = bench.main(["paired", "--model", "resnet18", "--size", "64", "--batch", "2", "--rounds", "0"])
    assert code == 2
    assert "rounds must be at least 1" in capsys.readouterr().err
