"""Part 5: the distributed code path on one device, through torchrun.

1. A one-process group (NCCL on a GPU, gloo on CPU) with SparK under DistributedDataParallel and
   synchronised BatchNorms: steps, a checkpoint, and a resume that continues with the same loss.
2. ``spark-pretrain`` launched by ``torchrun --nproc_per_node 1``: one epoch, then ``--resume auto``
   to a second, ending on the right step with its checkpoint."""
import json
import math
import sys

from .options import CheckOptions
from ..process_output import last_line, run_child
from .results import PartResult

DDP_MARK = "GPU_CHECK_DDP "


def _torchrun(*args: str) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]


def ddp_resume(options: CheckOptions, result: PartResult) -> None:
    command = _torchrun("-m", "sparkmim.benchmarks.gpu_check.ddp_worker", options.device, str(options.scratch_dir),
                        "quick" if options.quick else "full")
    done = run_child(command, timeout=options.seconds_left())
    line = next((l for l in done.stdout.splitlines() if l.startswith(DDP_MARK)), None)
    if done.returncode != 0 or line is None:
        result.add("DDP step, checkpoint and resume under torchrun", False,
                   f"exit {done.returncode}: {last_line(done.stderr)}")
        return
    report = json.loads(line[len(DDP_MARK):])
    result.figures["ddp"] = report
    finite = all(math.isfinite(v) for v in report["losses"] + [report["continued"], report["resumed"]])
    result.add(f"DDP ({report['backend']}) with {report['synchronised_norms']} synchronised norms: 4 steps finite",
               finite and report["ddp"] == "DistributedDataParallel" and report["synchronised_norms"] > 0,
               f"losses {', '.join(f'{v:.4f}' for v in report['losses'])}; with one process the reductions "
               "themselves are identities")
    difference = abs(report["continued"] - report["resumed"])
    result.add("resume from the checkpoint continues with the same loss", difference <= 1e-6 * max(1.0, abs(report["continued"])),
               f"continued {report['continued']:.6f}, resumed {report['resumed']:.6f}")


def pretrain_under_torchrun(options: CheckOptions, result: PartResult) -> None:
    from sparkmim.tools.smoke_data import write_images
    from sparkmim.utils.checkpoint import load_file

    data = write_images(options.scratch_dir / "torchrun_images", 16 if options.quick else 512,
                        72 if options.quick else 256, seed=0)
    run_dir = options.scratch_dir / "torchrun_pretrain"
    model = ["--model", "test_resnet", "--input-size", "64", "--batch-size", "8", "--decoder-width", "32"] \
        if options.quick else ["--model", "resnet50", "--input-size", "224", "--batch-size", "128", "--amp", "bf16"]
    common = [*model, "--device", options.device, "--workers", "2", "--no-progress", "--num-vis", "2",
              "--output-dir", str(run_dir), "--warmup-epochs", "0.5"]
    for epochs, extra in ((1, []), (2, ["--resume", "auto"])):
        done = run_child(_torchrun("-m", "sparkmim.pretrain", str(data), *common, "--epochs", str(epochs), *extra),
                         timeout=options.seconds_left())
        if done.returncode != 0:
            result.add(f"spark-pretrain under torchrun, epoch {epochs}", False,
                       f"exit {done.returncode}: {last_line(done.stderr)}")
            return
    checkpoint = load_file(run_dir / "checkpoint_last.pth")
    steps_per_epoch = checkpoint["sampler"]["steps_per_epoch"]
    result.add("spark-pretrain under torchrun: one epoch, then --resume auto to the second",
               checkpoint["epoch"] == 2 and checkpoint["step"] == 2 * steps_per_epoch,
               f"checkpoint at epoch {checkpoint['epoch']}, step {checkpoint['step']} ({steps_per_epoch} per epoch)")


def run(options: CheckOptions, result: PartResult) -> None:
    ddp_resume(options, result)
    pretrain_under_torchrun(options, result)
