"""on_host: what every checkpoint writer passes to torch.save, so files load on machines without the writer's GPU."""
from collections import OrderedDict

import torch

from sparkmim.utils.checkpoint import on_host


def test_tensors_come_back_detached_on_the_cpu_and_the_structure_is_kept():
    weight = torch.nn.Parameter(torch.ones(2))
    state = OrderedDict(weight=weight, nested={"steps": [torch.zeros(1), 3], "pair": (torch.ones(1), "x")})
    host = on_host({"model": state, "epoch": 4, "config": {"name": "resnet50", "size": None}})
    assert type(host["model"]) is OrderedDict and list(host["model"]) == ["weight", "nested"]
    assert not host["model"]["weight"].requires_grad and host["model"]["weight"].device.type == "cpu"
    assert isinstance(host["model"]["nested"]["steps"], list) and host["model"]["nested"]["steps"][1] == 3
    assert isinstance(host["model"]["nested"]["pair"], tuple) and host["model"]["nested"]["pair"][1] == "x"
    assert host["epoch"] == 4 and host["config"] == {"name": "resnet50", "size": None}


def test_cpu_tensors_are_not_copied():
    tensor = torch.arange(4.0)
    assert on_host({"t": tensor})["t"].data_ptr() == tensor.data_ptr()
