"""Checkpoint I/O: atomic writes, safe loading and unwrapping of the usual container layouts."""
import contextlib
import logging
import os
import re
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Collection, Dict, Mapping, Optional, Union

import torch

from sparkmim.utils.disk import writing
from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# keys under which training frameworks nest the actual state dict
WRAPPER_KEYS = ("model", "module", "state_dict")


# the pickled magic number that opens a file torch.save wrote in its format before PyTorch 1.6 (newer files are
# zip archives); after the pickle protocol's header, which depends on the protocol
LEGACY_TORCH_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class UnsafeCheckpointError(UserError, RuntimeError):
    """Raised when a file can only be read with full (code-executing) unpickling."""


class CheckpointReadError(UserError, RuntimeError):
    """The file is not a readable PyTorch checkpoint: another kind of file, or a damaged one."""


class NoStateDictError(UserError, ValueError):
    """A checkpoint holds no mapping of tensors where a state dict was expected."""


def save_atomic(obj: Any, path: PathLike, dump: Callable[[Any, IO[bytes]], Any] = torch.save) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either the old file or the complete new one.

    A crash mid-write leaves only a temporary file (``.*.tmp``), never a truncated checkpoint that a
    resume would pick up; a full disk or a read-only folder raises a one-line
    :class:`~sparkmim.utils.disk.WriteFailedError` and removes the temporary file. ``dump`` swaps the serializer for formats other tools read (e.g.
    ``pickle.dump`` for Detectron2's ``.pkl`` weights)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # permissions as for any file the user creates (umask), where mkstemp's are owner-only: a checkpoint
        # on a shared cluster file system is read by the group's other jobs and people
        tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                dump(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):  # a read-only folder keeps it: the next start removes it
                os.unlink(tmp_name)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def on_host(obj: Any) -> Any:
    """``obj`` with every tensor in it (through dicts, lists and tuples) detached and on the CPU.

    Saved checkpoints hold host tensors: a file written on a GPU then loads with a plain ``torch.load`` on a
    machine without one (tensors saved on a device are restored to that device, and fail where there is none).
    Tensors already on the CPU are not copied."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):  # OrderedDict (state dicts) included
        return type(obj)((key, on_host(value)) for key, value in obj.items())
    if isinstance(obj, list):
        return [on_host(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(on_host(value) for value in obj)
    return obj


def load_file(path: PathLike, allow_unsafe: bool = False, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint with ``weights_only`` safe unpickling.

    Files that need arbitrary unpickling are refused unless ``allow_unsafe`` is set, because loading
    them can execute code from the file. ``mmap`` maps the tensors' storage instead of reading it, so
    that reading a small part of a large file (a full checkpoint's config) costs little (zip-format
    files only: torch.save's since PyTorch 1.6)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointReadError(f"{path} is a folder, not a checkpoint file (e.g. {path / 'checkpoint_last.pth'})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others depending on version and file
        if not written_by_torch_save(path):  # full unpickling would not help: say what the file is not
            raise CheckpointReadError(f"{path} is not a PyTorch checkpoint (torch.save file): truncated, or another "
                                      f"kind of file ({_reason(error)})") from error
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"{path} cannot be loaded with safe (weights_only) unpickling ({_reason(error)}); if you trust the "
                "file, pass the allow-unsafe option to load it with full unpickling") from error
    logger.warning("loading %s with full unpickling (allow_unsafe)", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - a damaged file, or one pickling objects this environment lacks
        raise CheckpointReadError(f"{path} cannot be read even with full unpickling ({_reason(error)}): a damaged "
                                  "file, or one that needs code this environment does not have") from error


def written_by_torch_save(path: PathLike) -> bool:
    """Whether ``path`` has the layout torch.save writes: a zip archive (PyTorch 1.6 and later) or the older
    pickle stream, which starts with its magic number."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        head = handle.read(32)
    return head.startswith(b"\x80") and LEGACY_TORCH_MAGIC in head


def _reason(error: BaseException) -> str:
    """torch's loading error as one plain line: the unpickler's own reason when the message has one (the rest
    is advice about torch.load's arguments), without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    line = found.group(1) if found else next((line for line in text.splitlines() if line.strip()), "")
    line = line.strip().split(". ")[0]  # the first sentence: the rest is torch's advice
    return f"{type(error).__name__}: {line[:200]}{'...' if len(line) > 200 else ''}"


def recorded_config(path: PathLike, formats: Optional[Collection[str]] = None, allow_unsafe: bool = False
                    ) -> Dict[str, Any]:
    """The ``config`` a checkpoint records (of one of ``formats``, when given), read memory-mapped so that a
    full checkpoint's optimizer state is not read for it; {} for other files and for files that cannot be read
    (loading the weights themselves reports those, with the reason)."""
    try:
        obj = load_file(path, allow_unsafe=allow_unsafe, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: its real load says what is wrong
        return {}
    if not isinstance(obj, Mapping) or (formats is not None and obj.get("format") not in formats):
        return {}
    return dict(obj.get("config") or {})


def checkpoint_format(path: PathLike, allow_unsafe: bool = False) -> Optional[str]:
    """The ``format`` a checkpoint records ('' for a file without one, such as a bare state dict), read
    memory-mapped; None for a file that cannot be read (loading it for real reports why)."""
    try:
        obj = load_file(path, allow_unsafe=allow_unsafe, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: its real load says what is wrong
        return None
    return str(obj.get("format") or "") if isinstance(obj, Mapping) else ""


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """Return the tensor state dict inside ``obj``, descending through 'model'/'module'/'state_dict'.

    Non-tensor entries at the state-dict level (e.g. a 'config' dict in the reference release) are
    kept out; use the raw object to read them."""
    current = obj
    while isinstance(current, Mapping):
        tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        nested = next((current[k] for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if nested is None:
            break
        current = nested
    raise NoStateDictError("no state dict found: expected a mapping of tensors, possibly under "
                           f"one of {WRAPPER_KEYS}")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (e.g. DDP's 'module.')."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
