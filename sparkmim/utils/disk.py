"""Full disks and read-only folders: one line that says what failed and what is safe, not a traceback.

A checkpoint write that runs out of space surfaces from ``torch.save`` as ``RuntimeError: [enforce fail
at inline_container.cc] unexpected pos ...`` with the real cause (``No space left on device``) buried in
the exception chain; a folder made read-only mid-run ends in a bare ``PermissionError``. :func:`writing`
turns any such failure into a :class:`WriteFailedError` naming the file, :func:`keeping_last_good` adds
which checkpoint is still intact (the atomic writes guarantee that one is), and
:func:`check_free_space` warns at start, before an epoch is spent training towards a save that cannot fit.
"""
import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

import torch

from .errors import UserError

logger = logging.getLogger(__name__)

# errors a user fixes on the file system (space, quota, permissions), as opposed to bugs
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})


class WriteFailedError(UserError):
    """A file of the run could not be written for a reason of the file system (space, permissions)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def os_error_in(error: BaseException) -> Optional[OSError]:
    """The first file-system ``OSError`` in ``error``'s chain (torch wraps it in a ``RuntimeError``)."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def describe(os_error: OSError) -> str:
    """``no space left on device``, ``permission denied``, ``read-only file system``, ..."""
    reason = os.strerror(os_error.errno) if os_error.errno else str(os_error)
    return reason[:1].lower() + reason[1:]


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around a write of ``path``: a file-system failure anywhere inside becomes a one-line
    :class:`WriteFailedError` (other errors pass unchanged)."""
    try:
        yield
    except WriteFailedError:
        raise
    except Exception as error:
        os_error = os_error_in(error)
        if os_error is None:
            raise
        raise WriteFailedError(f"{describe(os_error)} writing {Path(path).resolve()}", Path(path)) from error


@contextlib.contextmanager
def keeping_last_good(last_checkpoint: Path) -> Iterator[None]:
    """Around a training run: a :class:`WriteFailedError` is re-raised saying which checkpoint is intact
    (``last_checkpoint`` when it exists: written atomically, it is either the old or the new file)."""
    try:
        yield
    except WriteFailedError as error:
        path = Path(last_checkpoint)
        safe = (f"the last good checkpoint is {path.resolve()}" if path.is_file()
                else "no checkpoint had been written yet")
        raise WriteFailedError(f"{error}; {safe}; free space (or fix the permissions) and continue with "
                               "--resume auto", error.path) from error


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors' data as ``torch.save`` writes them."""
    return sum(t.numel() * t.element_size() for t in tensors)


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers as ``torch.save`` writes them."""
    return tensor_bytes(list(module.parameters()) + list(module.buffers()))


def check_free_space(folder: Path, needed: int, what: str) -> bool:
    """Warn (once, at start) when ``folder``'s file system has less than ``needed`` bytes free; returns
    whether there is enough. A warning, not an error: space may be freed while the run trains."""
    try:
        free = shutil.disk_usage(Path(folder)).free
    except OSError:
        return True  # cannot tell (some network file systems): say nothing rather than guess
    if free >= needed:
        return True
    logger.warning("only %.1f MB free in %s, but %s needs about %.1f MB: the first save will fail unless "
                   "space is freed", free / 2 ** 20, Path(folder).resolve(), what, needed / 2 ** 20)
    return False


def check_space_for_saves(folder: Path, sizes: Mapping[str, int], what: str) -> bool:
    """:func:`check_free_space` for atomic saves of the files named in ``sizes`` (name -> bytes): each is
    written beside its old version before replacing it, so a save needs twice its size, less what the
    old files already occupy."""
    existing = sum((Path(folder) / name).stat().st_size for name in sizes if (Path(folder) / name).is_file())
    return check_free_space(folder, 2 * sum(sizes.values()) - existing, what)
