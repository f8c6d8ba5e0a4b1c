"""The console commands start through ``sparkmim.launch``, so that a Ctrl-C while torch is still being
imported ends with one line and status 130, like an interrupt anywhere later, instead of a traceback."""
import importlib.util
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from sparkmim import launch

REPO = Path(__file__).resolve().parents[2]


def _console_scripts() -> Dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([^"]+)"$', section, flags=re.M))


def test_every_console_command_starts_through_the_launcher_and_names_a_module_with_main():
    scripts = _console_scripts()
    assert set(scripts) == set(launch.COMMAND_MODULES)
    for command, target in scripts.items():
        module, function = target.split(":")
        assert module == "sparkmim.launch", command
        assert callable(getattr(launch, function)), command
        spec = importlib.util.find_spec(launch.COMMAND_MODULES[command])
        assert spec is not None and "def main(" in Path(spec.origin).read_text(), command


def test_importing_the_launcher_or_the_package_does_not_import_torch():
    code = "import sys, sparkmim, sparkmim.launch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_the_package_still_offers_its_public_names():
    import sparkmim
    assert sparkmim.build_spark.__name__ == "build_spark"
    assert set(sparkmim.__all__) <= set(dir(sparkmim)) | {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        sparkmim.nothing_here


def _interrupt_while_importing_torch(command: List[str]) -> subprocess.CompletedProcess:
    """Run ``command`` under ``-X importtime`` (which reports each import on stderr as it completes) and
    send SIGINT once a torch submodule has finished importing but torch itself has not."""
    # a job started in the background by a non-interactive shell (as CI may be) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: the child gets the default disposition back, as in a
    # terminal
    process = subprocess.Popen([sys.executable, "-X", "importtime", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stderr:
        lines.append(line)
        if re.search(r"\|\s+torch\._C$", line.rstrip()):
            process.send_signal(signal.SIGINT)
            break
    else:
        process.wait()
        pytest.fail("torch._C never appeared in the import report:\n" + "".join(lines[-20:]))
    stdout, rest = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(lines) + rest)


def _own_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_ctrl_c_while_a_command_imports_torch_is_one_line_and_status_130(how):
    if how == "console script":
        script = Path(sys.executable).with_name("spark-pretrain")
        if not script.exists():
            pytest.skip(f"the spark-pretrain console script is not installed beside {sys.executable}")
        command = [str(script), "--help"]
    else:
        command = ["-m", "sparkmim.pretrain", "--help"]
    result = _interrupt_while_importing_torch(command)
    assert _own_lines(result.stderr) == ["spark-pretrain: interrupted"], result.stderr[-3000:]
    assert result.returncode == 130
    assert result.stdout == ""  # the interrupt came before the help text
