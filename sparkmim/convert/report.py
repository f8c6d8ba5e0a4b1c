"""Key accounting shared by every weight converter: each source key is converted or dropped."""
from dataclasses import dataclass, field
from typing import Iterable, List


class KeyAccountingError(KeyError):
    """Some source keys could not be mapped (or target keys are missing); the message lists them."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


@dataclass
class ConversionReport:
    """What a conversion did: keys converted, keys dropped on purpose (with the reason)."""

    converted: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.converted)} keys converted, {len(self.dropped)} dropped"
        if self.dropped:
            shown = ", ".join(self.dropped[:8]) + (" ..." if len(self.dropped) > 8 else "")
            text += f" ({shown})"
        return text


def fail_on_unmapped(unmapped: Iterable[str], what: str) -> None:
    keys = sorted(unmapped)
    if keys:
        shown = ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")
        raise KeyAccountingError(f"{what}: {len(keys)} key(s) cannot be mapped: {shown}")
