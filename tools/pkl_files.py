"""Read Detectron2-style ``.pkl`` weight files without running code from them.

Such files are plain pickles of dicts of numpy arrays. ``pickle.load`` would import and call
whatever the file names; this unpickler resolves only numpy's array/dtype reconstruction and
refuses everything else, so ``spark-convert --inspect`` can look at a ``.pkl`` safely."""
import pickle
from pathlib import Path
from typing import Any

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> Any:
    """Load a pickle that holds only containers, numbers, strings and numpy arrays."""
    with Path(path).open("rb") as handle:
        return _NumpyOnlyUnpickler(handle).load()
