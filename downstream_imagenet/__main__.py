"""``python -m sparkmim.downstream_imagenet`` = ``spark-finetune``."""
import sys

from sparkmim.launch import launch

sys.exit(launch("spark-finetune"))
