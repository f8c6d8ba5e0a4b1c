"""``python -m sparkmim.pretrain``: the same as the ``spark-pretrain`` command."""
import sys

from .main import main

sys.exit(main())
