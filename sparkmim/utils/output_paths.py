"""Output paths named on a command line, checked before any work is done: a folder where a file was meant
(or a file where a folder was meant) otherwise ends minutes of work with a traceback at the first write."""
from pathlib import Path

from sparkmim.utils.errors import UserError


def _check_parents(path: Path, option: str) -> None:
    nearest = next((parent for parent in path.parents if parent.exists()), None)
    if nearest is not None and not nearest.is_dir():
        raise UserError(f"{option} {path}: {nearest} is a file, not a folder")


def check_output_file(path: Path, option: str, example: str = "results.json") -> None:
    """``path`` can be written as a file: it is not a folder and no part of its folder is a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name, e.g. {path / example}")
    _check_parents(path, option)


def check_output_folder(path: Path, option: str) -> None:
    """``path`` can be used as a folder: it is not a file and no part of it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder")
    _check_parents(path, option)
