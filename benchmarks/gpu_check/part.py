"""Run one part of ``spark-bench gpu-check`` in this process and print its result as one marked
line (the runner starts each part in a fresh process, so a crash, a hang or an out-of-memory in one
part costs only that part)."""
import json
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from .options import CheckOptions
from .results import PartResult

MARK = "GPU_CHECK_PART "
PARTS = {  # name -> (title, module)
    "correctness": ("1. Correctness on the device", "correctness"),
    "sync": ("2. No host-device synchronisation", "sync"),
    "throughput": ("3. Throughput and memory", "throughput"),
    "data": ("4. Data path", "data_path"),
    "distributed": ("5. Distributed code path", "distributed"),
    "finetune": ("6. spark-finetune on the device", "finetune_part"),
    "value": ("7. Proof-of-value benchmark, gpu preset", "value_part"),
}


def journal_path(options: CheckOptions, name: str) -> Path:
    """Where part ``name`` keeps its findings so far (read by the runner if the part is stopped)."""
    return options.out_dir / f"partial_{name}.json"


def run_part(name: str, options: CheckOptions) -> PartResult:
    import importlib

    title, module = PARTS[name]
    options.out_dir.mkdir(parents=True, exist_ok=True)
    result = PartResult(part=name, title=title, journal=str(journal_path(options, name)))
    tick = time.monotonic()
    if options.seconds:
        options = replace(options, deadline=time.time() + options.seconds)
    try:
        importlib.import_module(f"{__package__}.{module}").run(options, result)
    except Exception as error:  # noqa: BLE001 - a part's failure is reported, the next part still runs
        result.status = "error"
        result.message = f"{type(error).__name__}: {error}"
        result.figures["traceback"] = traceback.format_exc()
    result.seconds = time.monotonic() - tick
    return result.settle()


def main() -> int:
    name, options = sys.argv[1], CheckOptions.from_json(sys.argv[2])
    print(MARK + json.dumps(run_part(name, options).to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
