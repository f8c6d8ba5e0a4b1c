"""``spark-d2-convert SRC.pth DST.pkl``: ``spark-convert SRC DST --to d2`` under its own name.

The key table lives in :mod:`sparkmim.convert.detectron2` (it needs no Detectron2); this module only
keeps the command name the Detectron2 docs use. Also ``python -m sparkmim.downstream_d2.convert``."""
import sys
from typing import Optional, Sequence

from sparkmim.tools.convert import alias_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return alias_main("d2", "spark-d2-convert", argv)


if __name__ == "__main__":
    sys.exit(main())
