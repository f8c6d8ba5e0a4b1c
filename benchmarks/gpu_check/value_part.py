"""Part 7: the proof-of-value benchmark's ``gpu`` preset (``spark-bench value``), last and only with
the time left; ``--quick`` runs its smoke preset on generated data instead."""
import json
import sys

from .options import CheckOptions
from ..process_output import last_line, run_child
from .results import PartResult


def run(options: CheckOptions, result: PartResult) -> None:
    out = options.out_dir / "value"
    command = [sys.executable, "-m", "sparkmim.benchmarks.cli", "value", "--out", str(out), "--device", options.device]
    if options.quick:  # the smoke preset, one seed and one label fraction: the code path only
        command += ["--smoke", "--seeds", "0", "--fractions", "0.5"]
    else:
        if options.value_data is None:
            from sparkmim.benchmarks.value.data import find_fashion_mnist
            from sparkmim.utils.errors import UserError

            try:
                find_fashion_mnist()
            except UserError as error:
                result.status, result.message = "skipped", f"no data for the value benchmark: {error}"
                return
        command += ["--preset", "gpu"] + (["--data", options.value_data] if options.value_data else [])
    done = run_child(command, timeout=options.seconds_left(margin=10))
    if done.returncode != 0:
        result.add("spark-bench value " + ("--smoke" if options.quick else "--preset gpu"), False,
                   f"exit {done.returncode}: {last_line(done.stderr)}")
        return
    table = (out / "results.md").read_text() if (out / "results.md").is_file() else ""
    result.tables.append(table)
    summary = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    result.figures["value"] = {k: summary[k] for k in ("settings", "timings") if k in summary}
    result.add("spark-bench value " + ("--smoke" if options.quick else "--preset gpu") + " finished", True,
               f"results in {out}")
