"""What a part found, and the two files the command keeps up to date after every part."""
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from sparkmim.utils.checkpoint import save_atomic

NO_CUDA = "skipped: no CUDA"


@dataclass
class Check:
    """One yes/no finding; ``passed`` None = not applicable here (``detail`` says why)."""

    name: str
    passed: Optional[bool]
    detail: str = ""


@dataclass
class PartResult:
    part: str
    title: str
    status: str = "ok"                 # ok | failed | skipped | timed out | error
    seconds: float = 0.0
    checks: List[Check] = field(default_factory=list)
    tables: List[str] = field(default_factory=list)   # Markdown tables of figures
    figures: Dict[str, Any] = field(default_factory=dict)
    message: str = ""
    # where the part's process writes what it has found so far (not part of the result itself): the
    # runner reads it when it stops the part at its limit, so a slow last step loses only itself
    journal: Optional[str] = field(default=None, repr=False, compare=False)

    def add(self, name: str, passed: Optional[bool], detail: str = "") -> None:
        self.checks.append(Check(name, passed, detail))
        self.record()

    def record(self) -> None:
        """Write the findings so far to the journal (atomically), if the part has one."""
        if self.journal is not None:
            save_atomic(self.to_json(), Path(self.journal),
                        dump=lambda obj, handle: handle.write(json.dumps(obj).encode()))

    def settle(self) -> "PartResult":
        """The status from the checks: failed if any failed (unless already an error or timeout)."""
        if self.status == "ok" and any(c.passed is False for c in self.checks):
            self.status = "failed"
        return self

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        del data["journal"]
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "PartResult":
        checks = [Check(**c) for c in data.pop("checks", [])]
        return cls(**data, checks=checks)

    @classmethod
    def from_journal(cls, path: Path) -> Optional["PartResult"]:
        """What a part had recorded when it was stopped; None if it recorded nothing readable."""
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def environment(device: str) -> Dict[str, Any]:
    """Date, machine, device and library versions: the first lines of every report."""
    import datetime

    import timm
    import torch

    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
             "device": device, "cpu": _cpu_name(),
             "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             # what "fp32" means on a GPU: cuDNN convolutions in TF32 unless switched off (torch's default)
             "fp32_convolutions_tf32": torch.backends.cudnn.allow_tf32,
             "fp32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x {os.cpu_count()}"


def write_reports(out: Path, header: Dict[str, Any], results: List[PartResult]) -> None:
    """``results.json`` (everything) and ``summary.md`` (tables), rewritten atomically after each part."""
    payload = {"environment": header, "parts": [r.to_json() for r in results]}
    save_atomic(payload, out / "results.json", dump=lambda obj, handle: handle.write(json.dumps(obj, indent=1).encode()))
    save_atomic(summary_markdown(header, results), out / "summary.md",
                dump=lambda text, handle: handle.write(text.encode()))


def summary_markdown(header: Dict[str, Any], results: List[PartResult]) -> str:
    lines = ["# spark-bench gpu-check", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {r.title} | {r.status} | {r.seconds:.0f} |" for r in results]
    for result in results:
        lines += ["", f"## {result.title}: {result.status}", ""]
        if result.message:
            lines += [result.message, ""]
        if result.checks:
            lines += ["| check | result | detail |", "|---|---|---|"]
            for check in result.checks:
                verdict = {True: "pass", False: "FAIL", None: "n/a"}[check.passed]
                lines.append(f"| {check.name} | {verdict} | {check.detail} |")
        for table in result.tables:
            lines += ["", table]
    return "\n".join(lines) + "\n"
