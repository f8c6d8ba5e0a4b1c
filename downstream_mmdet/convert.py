"""``spark-mmdet-convert SRC.pth DST.pth``: ``spark-convert SRC DST --to mmdet`` under its own name.

The key table lives in :mod:`sparkmim.convert.mmdet` (it needs no mmdet); this module only keeps the
command name the MMDetection docs use. Also ``python -m sparkmim.downstream_mmdet.convert``."""
import sys
from typing import Optional, Sequence

from sparkmim.tools.convert import alias_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return alias_main("mmdet", "spark-mmdet-convert", argv)


if __name__ == "__main__":
    sys.exit(main())
