"""Key accounting between weights and a model: what is missing, unexpected or wrongly shaped.

One implementation serves every loader (fine-tuning, spark-convert's checks, MMDetection's backbone
file, the reference importers), so each reports mismatches the same way: the keys by name."""
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from .report import KeyAccountingError

Shape = Tuple[int, ...]


def shown(keys: Sequence[str], limit: int = 12) -> str:
    """The first ``limit`` keys, sorted, and how many there are in all."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


@dataclass
class KeyCheck:
    """The outcome of comparing weights with a model's expected keys and shapes."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)  # "key (weights shape) vs (model shape)"
    allowed_missing: List[str] = field(default_factory=list)  # absent, but the caller allows it

    def problems(self, model_name: str = "the model", limit: int = 12) -> List[str]:
        found = []
        if self.missing:
            found.append(f"missing from the weights: {shown(self.missing, limit)}")
        if self.unexpected:
            found.append(f"not in {model_name}: {shown(self.unexpected, limit)}")
        if self.mismatched:
            found.append(f"shape mismatch (weights vs model): {shown(self.mismatched, limit)}")
        return found


def check_keys(expected: Mapping[str, Shape], weights: Mapping[str, Shape],
               may_be_missing: Callable[[str], bool] = lambda key: False) -> KeyCheck:
    """Compare key -> shape maps; ``may_be_missing(key)`` marks expected keys that may be absent
    (a classifier to be trained, BatchNorm batch counters)."""
    absent = sorted(k for k in expected if k not in weights)
    return KeyCheck(
        missing=[k for k in absent if not may_be_missing(k)],
        unexpected=sorted(k for k in weights if k not in expected),
        mismatched=sorted(f"{k} {tuple(weights[k])} vs {tuple(expected[k])}" for k in weights
                          if k in expected and tuple(weights[k]) != tuple(expected[k])),
        allowed_missing=[k for k in absent if may_be_missing(k)])


def shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, advice: str,
                     allowed_missing: Iterable[str] = (), limit: int = 12) -> KeyCheck:
    """Refuse weights that do not fit ``model`` with one :class:`KeyAccountingError`, ``"{what} (the keys
    that differ, by name); {advice}"``: torch's own error spans many lines, and its first says only that
    loading failed. ``allowed_missing``: key prefixes that may be absent (e.g. a classifier to be trained)."""
    prefixes = tuple(allowed_missing)
    check = check_keys(shapes_of(model.state_dict()), shapes_of(state_dict),
                       may_be_missing=lambda key: key.startswith(prefixes))
    problems = check.problems(limit=limit)
    if problems:
        raise KeyAccountingError(f"{what} ({'; '.join(problems)}); {advice}")
    return check


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                            allowed_missing: Iterable[str] = ()) -> KeyCheck:
    """``model.load_state_dict`` that names missing, unexpected and wrongly-shaped keys in one error
    (:func:`check_state_dict`)."""
    check = check_state_dict(model, state_dict, f"{what} does not match the model",
                             "was it made for another model or settings?", allowed_missing)
    model.load_state_dict(state_dict, strict=False)
    return check
