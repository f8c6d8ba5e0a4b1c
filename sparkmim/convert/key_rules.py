"""One engine for renaming state-dict keys by tables of rules, with every key accounted for.

Each converter in sparkmim (facebookresearch or torchvision ConvNeXt -> timm, timm -> Detectron2
ResNet, timm -> mmpretrain ConvNeXt) is a :class:`KeyTable`: a source key is refused (the target has
no place for that part: an error naming the keys and the reason), dropped on purpose (reported), or
renamed by the first matching rule (with an optional value transform). A key that matches nothing is
an error that names it, so a converter never guesses and never loses a tensor silently."""
import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .report import ConversionReport, KeyAccountingError

Transform = Callable[[torch.Tensor], torch.Tensor]
# a ``re`` replacement template (``r"res\1.\2"``), or a function of the match that returns the new
# key, or None when the rule does not apply to this key after all
Target = Union[str, Callable[["re.Match[str]"], Optional[str]]]


class RefusedKeysError(KeyAccountingError):
    """The source holds a part the target format cannot represent (not a naming problem)."""


def keep(value: torch.Tensor) -> torch.Tensor:
    return value


def to_vector(value: torch.Tensor) -> torch.Tensor:
    """(C,) from any shape holding C values: per-channel parameters that one naming scheme stores as
    (1, 1, 1, C) or (C, 1, 1) (facebookresearch GRN, torchvision layer scale) and another as (C,)."""
    return value.reshape(-1)


def describe_keys(keys: Sequence[str], limit: int = 6) -> str:
    """``a, b, c, ... (N keys)``: key lists in one-line messages."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


@dataclass(frozen=True)
class Rename:
    """Source keys fully matching ``pattern`` become ``target`` (values through ``transform``)."""

    pattern: str
    target: Target
    transform: Transform = keep

    def apply(self, key: str) -> Optional[str]:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        return match.expand(self.target) if isinstance(self.target, str) else self.target(match)


# the fields a name template may hold (``{s}`` stage, ``{b}`` block, ``{i}`` index in a pair of modules,
# ``{n}`` 1 or 2, ``{p}`` a parameter); each matches what its name says and nothing else
PLACEHOLDERS = {"s": r"\d+", "b": r"\d+", "i": r"[01]", "n": r"[12]", "p": r"weight|bias"}
_FIELD = re.compile(r"\{(\w)\}")


def name_rule(source: str, target: str, transform: Transform = keep) -> Rename:
    """A :class:`Rename` written as two names, e.g. ``name_rule("stages.{s}.{b}.dwconv.{p}",
    "stages.{s}.blocks.{b}.conv_dw.{p}")``; ``name_rule(target, source)`` is the way back."""
    pattern, at = "", 0
    for field_match in _FIELD.finditer(source):
        pattern += re.escape(source[at:field_match.start()]) + f"(?P<{field_match[1]}>{PLACEHOLDERS[field_match[1]]})"
        at = field_match.end()
    pattern += re.escape(source[at:])
    return Rename(pattern, _FIELD.sub(lambda m: rf"\g<{m[1]}>", target), transform)


@dataclass(frozen=True)
class Drop:
    """Source keys fully matching ``pattern`` are left out on purpose (``reason`` says why)."""

    pattern: str
    reason: str


@dataclass(frozen=True)
class Refuse:
    """Source keys fully matching ``pattern`` make the conversion impossible (``reason`` says why)."""

    pattern: str
    reason: str


@dataclass(frozen=True)
class KeyTable:
    """A complete conversion between two naming schemes.

    ``required``: (target key, message) pairs; a result without the key is refused with the message
    (e.g. "no ResNet stem found: is this a timm ResNet?")."""

    name: str
    renames: Sequence[Rename]
    drops: Sequence[Drop] = ()
    refusals: Sequence[Refuse] = ()
    required: Sequence[Tuple[str, str]] = ()

    def target_of(self, key: str) -> Optional[Tuple[str, Transform]]:
        for rule in self.renames:
            new_key = rule.apply(key)
            if new_key is not None:
                return new_key, rule.transform
        return None

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
        """Renamed tensors and the accounting (``report.renamed`` maps source -> target key).

        Raises :class:`RefusedKeysError` for a part the target cannot hold and
        :class:`KeyAccountingError` naming every key no rule covers."""
        keys = list(state_dict)
        for refusal in self.refusals:
            offending = [k for k in keys if re.fullmatch(refusal.pattern, k)]
            if offending:
                raise RefusedKeysError(f"cannot convert {self.name}: {refusal.reason} (keys {describe_keys(offending)})")
        out: Dict[str, torch.Tensor] = {}
        report, unknown = ConversionReport(), []
        for key in keys:
            if any(re.fullmatch(drop.pattern, key) for drop in self.drops):
                report.dropped.append(key)
                continue
            found = self.target_of(key)
            if found is None:
                unknown.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                raise KeyAccountingError(f"{self.name}: value of '{key}' is a {type(value).__name__}, expected a tensor")
            new_key, transform = found
            if new_key in out:
                raise KeyAccountingError(f"{self.name}: '{key}' and '{report.source_of(new_key)}' both map to '{new_key}'")
            out[new_key] = transform(value)
            report.converted.append(key)
            report.renamed[key] = new_key
        if unknown:
            raise KeyAccountingError(f"unknown keys for a {self.name} conversion: {describe_keys(sorted(unknown))}")
        for target_key, message in self.required:
            if target_key not in out:
                raise RefusedKeysError(f"{self.name}: {message}")
        return out, report

