"""One torchrun process: SparK under DistributedDataParallel with synchronised BatchNorm (NCCL on a
GPU, gloo on CPU), a few steps, a checkpoint, and a resume that must continue exactly.

With one process spark-pretrain itself skips DDP (nothing to synchronise), so this worker sets up
the process group explicitly: the point is to run the multi-GPU code path on the one GPU there is.
Prints one line ``GPU_CHECK_DDP {json}``."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

MARK = "GPU_CHECK_DDP "


def _build(device: torch.device, quick: bool):
    from sparkmim import build_spark, convert_sync_batchnorm
    from sparkmim.pretrain.optim import build_optimizer
    from sparkmim.utils.run import wrap_ddp

    torch.manual_seed(0)
    name, size = ("test_resnet", 64) if quick else ("resnet50", 224)
    spark = convert_sync_batchnorm(build_spark(name, input_size=size, decoder_width=32 if quick else 512).to(device))
    model = wrap_ddp(spark, device, device.index or 0)
    return spark, model, build_optimizer(spark, lr=1e-4, betas=(0.9, 0.95), clip_grad=5.0), size


def _step(model, optimizer, images, active, device) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = model(images, active).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def main() -> int:
    device_name, out, quick = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "quick"
    cuda = device_name.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # the GPU asked for (cuda:N) when this is the only process, as spark-pretrain takes it; else the local rank's
    index = device_name.partition(":")[2]
    gpu = int(index) if index and int(os.environ.get("WORLD_SIZE", "1")) == 1 else local_rank
    device = torch.device("cuda", gpu) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    spark, model, optimizer, size = _build(device, quick)
    batch = 4 if quick else 32
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    h = size // spark.downsample_ratio
    active = spark.mask(batch, h, h, device, generator=torch.Generator(device=device).manual_seed(2))
    losses = [_step(model, optimizer, images, active, device) for _ in range(3)]
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "ddp_checkpoint.pth"
    torch.save({"model": spark.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    continued = _step(model, optimizer, images, active, device)
    spark2, model2, optimizer2, _ = _build(device, quick)
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    spark2.load_state_dict(state["model"])
    optimizer2.load_state_dict(state["optimizer"])
    resumed = _step(model2, optimizer2, images, active, device)
    from sparkmim.sparse.norms import SparseBatchNorm2d

    sync_bns = sum(isinstance(m, torch.nn.SyncBatchNorm) or (isinstance(m, SparseBatchNorm2d) and m.sync)
                   for m in spark.modules())
    print(MARK + json.dumps({"backend": dist.get_backend(), "losses": losses, "continued": continued,
                             "resumed": resumed, "synchronised_norms": int(sync_bns),
                             "ddp": type(model).__name__}), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
