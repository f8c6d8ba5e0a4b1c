"""Run the coverage survey: every qualifying family's smallest members through :mod:`.trial`, each in its
own process with a time limit, several at once."""
import json
import logging
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

from ..process_output import last_line, run_child
from .families import Family, survey_family, timm_modules
from .trial import CRASHES, TIMEOUT, WORKS, TrialResult

logger = logging.getLogger(__name__)


@dataclass
class FamilyOutcome:
    """A family and what its tried members did; the family works when one of them does."""
    family: Family
    trials: List[TrialResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.family.qualifies:
            return "not qualifying"
        if any(trial.status == WORKS for trial in self.trials):
            return WORKS
        return self.trials[0].status

    @property
    def shown_trial(self) -> Optional[TrialResult]:
        """The working member if there is one, else the smallest tried."""
        return next((t for t in self.trials if t.status == WORKS), self.trials[0] if self.trials else None)

    def to_dict(self) -> dict:
        return {"module": self.family.module, "kind": self.family.kind, "status": self.status,
                "members_qualifying": len(self.family.members), "reason_not_qualifying": self.family.reason,
                "params_m": {t.model: self.family.params_m[t.model] for t in self.trials},
                "trials": [asdict(trial) for trial in self.trials]}


def trial_in_subprocess(model: str, timeout_s: float, threads: int) -> TrialResult:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "sparkmim.benchmarks.coverage.trial", model]
    try:
        done = run_child(command, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return TrialResult(model, TIMEOUT, f"no result within {timeout_s:.0f} s", timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = last_line(done.stderr)[:200]
        return TrialResult(model, CRASHES, f"process ended with status {done.returncode}: {tail}")
    return TrialResult(**json.loads(lines[-1]))


def try_family(family: Family, tries: int, timeout_s: float, threads: int) -> FamilyOutcome:
    """The smallest member first; the next ones only while none works (a family's small members can use
    other layers: fastvit's t-variants are convolutional, its sa-variants are not)."""
    outcome = FamilyOutcome(family)
    for model in family.members[:tries]:
        result = trial_in_subprocess(model, timeout_s, threads)
        outcome.trials.append(result)
        logger.info("%-28s %-24s %s%s", family.module, model, result.status,
                    f": {result.reason[:100]}" if result.reason else "")
        if result.status == WORKS:
            break
    return outcome


def run_survey(modules: Optional[Sequence[str]] = None, jobs: int = 2, tries: int = 2,
               timeout_s: float = 300.0) -> List[FamilyOutcome]:
    names = timm_modules(modules)
    logger.info("ranking the members of %d timm families on the meta device", len(names))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        families = list(pool.map(survey_family, names))
    qualifying = [family for family in families if family.qualifies]
    logger.info("%d of %d families qualify; trying up to %d members each", len(qualifying), len(families), tries)
    threads = max(1, (os.cpu_count() or 2) // jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        tried = {o.family.module: o for o in pool.map(lambda f: try_family(f, tries, timeout_s, threads), qualifying)}
    return [tried.get(family.module, FamilyOutcome(family)) for family in families]
