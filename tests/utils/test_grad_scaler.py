"""grad_scaler: fp16 gets a gradient scaler on every torch the package supports (``torch.amp.GradScaler``
exists from torch 2.3 on). The MMDetection environment runs this file on its torch 2.1."""
import warnings

import pytest
import torch

from sparkmim.utils.config import ConfigError
from sparkmim.utils.run import grad_scaler

CPU = torch.device("cpu")


def test_only_fp16_gets_a_scaler():
    assert grad_scaler("off", CPU) is None and grad_scaler("bf16", CPU) is None and grad_scaler("none", CPU) is None
    if hasattr(torch.amp, "GradScaler"):
        assert isinstance(grad_scaler("fp16", CPU), torch.amp.GradScaler)
    else:  # torch 2.1 and 2.2 have no CPU scaler
        with pytest.raises(ConfigError, match=r"--amp fp16 on cpu needs torch >= 2.3 .*use --amp bf16 or off"):
            grad_scaler("fp16", CPU)


def test_fp16_on_a_gpu_gets_a_scaler_on_every_supported_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU the scaler says it disables itself
        scaler = grad_scaler("fp16", torch.device("cuda", 0))
    assert scaler is not None and callable(scaler.scale) and callable(scaler.unscale_)
