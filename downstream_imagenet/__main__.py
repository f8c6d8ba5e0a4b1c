"""``python -m sparkmim.downstream_imagenet`` = ``spark-finetune``."""
import sys

from .main import main

sys.exit(main())
