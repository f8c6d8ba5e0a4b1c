"""Key accounting shared by every weight converter: each source key is converted or dropped."""
from dataclasses import dataclass, field
from typing import Dict, List


class KeyAccountingError(KeyError):
    """Some source keys could not be mapped (or target keys are missing); the message lists them."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


@dataclass
class ConversionReport:
    """What a conversion did: keys converted (and to what), keys dropped on purpose, notes."""

    converted: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    renamed: Dict[str, str] = field(default_factory=dict)  # source key -> target key, where renamed

    def source_of(self, target_key: str) -> str:
        return next((k for k, v in self.renamed.items() if v == target_key), "?")

    def summary(self) -> str:
        text = f"{len(self.converted)} keys converted, {len(self.dropped)} dropped"
        if self.dropped:
            shown = ", ".join(self.dropped[:8]) + (" ..." if len(self.dropped) > 8 else "")
            text += f" ({shown})"
        return text

