"""The console commands' entry points: each imports its command's module only once it is inside a guard.

A command's module imports torch, which takes seconds; a Ctrl-C in those seconds used to end in a page of
import traceback, because the generated script imports the module before any of the command's own code
runs. Here the import happens inside a ``try``, so the interrupt ends with the same one line, and status
130, as an interrupt anywhere later. This module and the package's ``__init__`` import nothing heavy.
"""
import importlib
from typing import Dict

from .utils.errors import report_interrupt

# command -> the module whose ``main()`` runs it
COMMAND_MODULES: Dict[str, str] = {
    "spark-pretrain": "sparkmim.pretrain.main",
    "spark-finetune": "sparkmim.downstream_imagenet.main",
    "spark-d2-train": "sparkmim.downstream_d2.train_net",
    "spark-d2-convert": "sparkmim.downstream_d2.convert",
    "spark-mmdet-convert": "sparkmim.downstream_mmdet.convert",
    "spark-mmdet-train": "sparkmim.downstream_mmdet.train",
    "spark-mmdet-test": "sparkmim.downstream_mmdet.test",
    "spark-convert": "sparkmim.tools.convert",
    "spark-viz": "sparkmim.tools.viz",
    "spark-report": "sparkmim.tools.report",
    "spark-data": "sparkmim.tools.data",
    "spark-bench": "sparkmim.benchmarks.cli",
}


def launch(command: str) -> int:
    """Import ``command``'s module and run its ``main()``; an interrupt before the command's own handling
    takes over (while importing, or while parsing the arguments) gives one line and status 130."""
    try:
        main = importlib.import_module(COMMAND_MODULES[command]).main
        return main()
    except KeyboardInterrupt as interrupt:
        return report_interrupt(command, interrupt)


def pretrain() -> int:
    return launch("spark-pretrain")


def finetune() -> int:
    return launch("spark-finetune")


def d2_train() -> int:
    return launch("spark-d2-train")


def d2_convert() -> int:
    return launch("spark-d2-convert")


def mmdet_convert() -> int:
    return launch("spark-mmdet-convert")


def mmdet_train() -> int:
    return launch("spark-mmdet-train")


def mmdet_test() -> int:
    return launch("spark-mmdet-test")


def convert() -> int:
    return launch("spark-convert")


def viz() -> int:
    return launch("spark-viz")


def report() -> int:
    return launch("spark-report")


def data() -> int:
    return launch("spark-data")


def bench() -> int:
    return launch("spark-bench")
