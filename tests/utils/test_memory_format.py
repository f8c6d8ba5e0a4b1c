"""channels_last by default where it was measured to help (CUDA), and only there."""
import torch

from sparkmim.utils.memory_format import channels_last_default


def test_on_for_cuda_off_for_cpu_unless_chosen():
    assert channels_last_default(None, torch.device("cuda", 0)) is True
    assert channels_last_default(None, torch.device("cpu")) is False
    assert channels_last_default(False, torch.device("cuda")) is False
    assert channels_last_default(True, torch.device("cpu")) is True
