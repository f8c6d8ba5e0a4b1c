"""``python -m sparkmim.pretrain``: the same as the ``spark-pretrain`` command."""
import sys

from sparkmim.launch import launch

sys.exit(launch("spark-pretrain"))
