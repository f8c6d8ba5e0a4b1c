"""Loading converted weights into a model with every key accounted for."""
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .report import KeyAccountingError


def _shown(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                            allowed_missing: Iterable[str] = ()) -> None:
    """``model.load_state_dict`` that names missing, unexpected and wrongly-shaped keys in one error.

    ``allowed_missing``: key prefixes that may be absent (e.g. a classifier to be trained)."""
    expected = model.state_dict()
    allowed = tuple(allowed_missing)
    missing = [k for k in expected if k not in state_dict and not k.startswith(allowed)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in state_dict if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing: {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_shown(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (checkpoint vs model): {_shown(mismatched)}")
    if problems:
        raise KeyAccountingError(f"{what} does not match the model ({'; '.join(problems)}); was it made for another "
                                 f"model or settings?")
    model.load_state_dict(state_dict, strict=False)
