"""Helpers shared by the tests: building fixtures' models, masks, layer-output capture, writing a
model in the reference release layout, the condition of the triton kernel's tests."""
import os
import re
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn as nn

from sparkmim import SparK
from sparkmim.convert import convnext_timm_to_fb
from sparkmim.convert.reference_fixture import spark_from_reference_case


def skip_unless_triton_interpreter() -> None:
    """Skip (a test, or a whole module) unless the triton norm kernel runs here through Triton's interpreter:
    triton installed, no GPU (tests/conftest.py then sets TRITON_INTERPRET=1). On a GPU the kernels run
    compiled, and ``spark-bench gpu-check`` checks them there."""
    pytest.importorskip("triton", reason="the triton norm kernel needs the triton package")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the triton kernel through Triton's interpreter (set where there is no GPU); on a GPU, "
                    "spark-bench gpu-check checks it", allow_module_level=True)


def spark_from_fixture(case: dict) -> SparK:
    """The fixture's model (the library's builder, also used by ``spark-bench gpu-check``)."""
    return spark_from_reference_case(case)


def random_mask(batch: int, h: int, w: int, visible: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, h * w, generator=generator)
    keep = scores.argsort(dim=1)[:, :visible]
    return torch.zeros(batch, h * w, dtype=torch.bool).scatter_(1, keep, True).view(batch, 1, h, w)


def is_channels_last_output(module: nn.Module) -> bool:
    """Layers that produce (B, H, W, C) maps in timm CNNs: Linear and LayerNorm inside ConvNeXt-style blocks."""
    from timm.layers.grn import GlobalResponseNorm
    from timm.layers.norm import LayerNorm2d, LayerNorm2dFp32
    if isinstance(module, GlobalResponseNorm):
        return getattr(module, "channel_dim", 1) == -1
    return isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm) and not isinstance(module, (LayerNorm2d, LayerNorm2dFp32)))


def capture_layer_outputs(model: nn.Module) -> Tuple[Dict[str, Tuple[torch.Tensor, bool]], List]:
    """Record every 4-D tensor output of every module (name -> (output, channels_last))."""
    outputs: Dict[str, Tuple[torch.Tensor, bool]] = {}
    handles = []
    for name, module in model.named_modules():
        def hook(mod, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                outputs[name] = (output.detach().clone(), is_channels_last_output(mod))
        handles.append(module.register_forward_hook(hook))
    return outputs, handles


def masked_part(output: torch.Tensor, channels_last: bool, active: torch.Tensor):
    """The values of ``output`` at masked positions, or None if its grid does not align with the mask."""
    height, width = (output.shape[1], output.shape[2]) if channels_last else output.shape[-2:]
    mask_h, mask_w = active.shape[-2:]
    if height < mask_h or height % mask_h or width % mask_w:
        return None
    full = active.repeat_interleave(height // mask_h, 2).repeat_interleave(width // mask_w, 3)
    if channels_last:
        full = full.permute(0, 2, 3, 1)
    return output.masked_select(~full.expand_as(output))


_DECODER_TO_REFERENCE = [
    (r"decoder\.stages\.(\d+)\.upsample\.", r"dense_decoder.dec.\1.up_sample."),
    (r"decoder\.stages\.(\d+)\.conv1\.", r"dense_decoder.dec.\1.conv.0."),
    (r"decoder\.stages\.(\d+)\.bn1\.", r"dense_decoder.dec.\1.conv.1."),
    (r"decoder\.stages\.(\d+)\.conv2\.", r"dense_decoder.dec.\1.conv.3."),
    (r"decoder\.stages\.(\d+)\.bn2\.", r"dense_decoder.dec.\1.conv.4."),
    (r"decoder\.proj\.", r"dense_decoder.proj."),
]


def reference_release(spark: SparK, arch: str, input_size: int = 224) -> dict:
    """A SparK model in the reference's ``*_withdecoder_1kpretrained_spark_style.pth`` layout (what its
    training saved: facebookresearch names for ConvNeXt, no encoder head, unused buffers, a config)."""
    state = spark.state_dict()
    encoder = {k[len("encoder.model."):]: v for k, v in state.items()
               if k.startswith("encoder.model.") and not k.startswith("encoder.model.head.")}
    if "convnext" in arch:
        encoder, _ = convnext_timm_to_fb(encoder)
    module = {f"sparse_encoder.sp_cnn.{k}": v for k, v in encoder.items()}
    for key, value in state.items():
        if not key.startswith("encoder."):
            for pattern, target in _DECODER_TO_REFERENCE:
                key = re.sub(pattern, target, key)
            module[key] = value
    module.update(imn_m=torch.zeros(1, 3, 1, 1), imn_s=torch.ones(1, 3, 1, 1), norm_black=torch.zeros(1, 3, 8, 8))
    module["config"] = {"mask_ratio": spark.mask_ratio, "densify_norm_str": spark.densify_norm, "sbn": False,
                        "hierarchy": 4, "sparse_encoder.input_size": input_size,
                        "dense_decoder.width": spark.decoder.width}
    return {"module": module, "arch": arch, "input_size": input_size, "epoch": 1599, "is_pretrain": True}
