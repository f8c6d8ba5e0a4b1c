"""The order of the parts, their time limits, and the files written after each one."""
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

from .options import CheckOptions
from .part import MARK, PARTS, journal_path
from ..process_output import last_line, run_child
from .results import PartResult, environment, write_reports

logger = logging.getLogger(__name__)

# seconds each part may take: on a GPU (the whole command fits in 8 minutes with start-up) and in
# --quick mode on a small CPU (CI). On an H200 (2026-12-04) correctness took 16 s, sync 18 s, the data
# part's two end-to-end runs over 75 s, the distributed part 75 s. Correctness and throughput now also
# run the fused triton norm kernel (its compilation included), so they have more and sync and data less.
# spark-finetune (not yet run on a GPU) comes before the value benchmark, which only starts with what is left;
# within the 480 s budget it runs on what the earlier parts leave of their limits (they mostly end early).
LIMITS = {"correctness": (60, 240), "sync": (30, 120), "throughput": (200, 300), "data": (95, 240),
          "distributed": (80, 300), "finetune": (60, 180), "value": (None, 420)}
MIN_VALUE_SECONDS = 60  # below this the value benchmark is not started


def run_gpu_check(options: CheckOptions, parts: Sequence[str], budget_s: Optional[float]) -> List[PartResult]:
    """Every part in order, each in a fresh process within its limit (and the budget left); the
    reports are rewritten after each part, so a visit cut short keeps what finished."""
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    header = {**environment(options.device), "command": "spark-bench gpu-check " + " ".join(sys.argv[2:]),
              "mode": "quick" if options.quick else "full"}
    start, results = time.monotonic(), []
    for name in parts:
        left = None if budget_s is None else budget_s - (time.monotonic() - start)
        limit = LIMITS[name][1 if options.quick else 0]
        if limit is None or (left is not None and left < limit):
            limit = left
        title = PARTS[name][0]
        if limit is not None and (limit < MIN_VALUE_SECONDS if name == "value" else limit <= 0):
            results.append(PartResult(part=name, title=title, status="skipped",
                                      message=f"not started: {max(0.0, left or 0):.0f} s of the budget left"))
        else:
            logger.info("gpu-check: %s (limit %s s)", title, "none" if limit is None else f"{limit:.0f}")
            results.append(_run_in_process(name, replace(options, seconds=float(limit or 0)), limit))
            logger.info("gpu-check: %s: %s in %.0f s", title, results[-1].status, results[-1].seconds)
            if not options.keep_scratch:
                shutil.rmtree(options.scratch_dir, ignore_errors=True)
        write_reports(out, header, results)
    return results


def _run_in_process(name: str, options: CheckOptions, limit: Optional[float]) -> PartResult:
    """The part's result; when its process is stopped at the limit or dies (a crash in a CUDA library,
    the kernel's out-of-memory killer), what it had recorded in its journal until then."""
    command = [sys.executable, "-m", "sparkmim.benchmarks.gpu_check.part", name, options.to_json()]
    journal = journal_path(options, name)
    journal.unlink(missing_ok=True)  # a journal left by an earlier run is not this run's
    tick = time.monotonic()
    try:
        done = run_child(command, timeout=limit)
    except subprocess.TimeoutExpired as expired:
        return _cut_short(name, journal, "timed out", time.monotonic() - tick,
                          f"stopped after its limit of {limit:.0f} s", expired.stderr)
    line = next((l for l in done.stdout.splitlines() if l.startswith(MARK)), None)
    if line is None:
        return _cut_short(name, journal, "error", time.monotonic() - tick,
                          f"the part's process ended with exit {done.returncode}", done.stderr)
    journal.unlink(missing_ok=True)
    return PartResult.from_json(json.loads(line[len(MARK):]))


def _cut_short(name: str, journal: Path, status: str, seconds: float, why: str, stderr) -> PartResult:
    result = PartResult.from_journal(journal) or PartResult(part=name, title=PARTS[name][0])
    result.status, result.seconds = status, seconds
    kept = f"; the {len(result.checks)} checks and {len(result.tables)} tables it had finished are kept" \
        if result.checks or result.tables else ""
    earlier = f" (before that: {result.message})" if result.message else ""
    result.message = f"{why}{kept}; last output: {last_line(stderr)}{earlier}"
    return result


def exit_status(results: List[PartResult]) -> int:
    """0 when nothing failed (skips allowed), 1 otherwise."""
    return 1 if any(r.status in ("failed", "error", "timed out") for r in results) else 0


def default_fixtures() -> Optional[Path]:
    """The reference-parity fixtures of a source checkout (tests/fixtures/reference), if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "tests" / "fixtures" / "reference"
        if candidate.is_dir():
            return candidate
    return None
