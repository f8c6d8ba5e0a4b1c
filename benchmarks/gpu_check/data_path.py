"""Part 4: spark-pretrain end to end on generated JPEGs, with and without ``--decode-on-device``:
the images/s of the whole job against the loader alone and the step alone, i.e. whether one GPU is
loader-bound (``spark-bench e2e``'s measurement, run twice)."""
from .options import CheckOptions
from .results import PartResult


def run(options: CheckOptions, result: PartResult) -> None:
    from sparkmim.benchmarks.perf.e2e import E2EConfig, format_e2e, run_e2e

    if options.quick:
        sizes = dict(num_images=12, image_size=80, model="test_resnet", size=64, batch=4, workers=1, warmup=1)
    else:
        # how one trains on a GPU: bf16, channels_last (spark-pretrain's default on CUDA)
        sizes = dict(num_images=1024, image_size=320, model="resnet50", size=224, batch=128, workers=12, warmup=2,
                     precision="bf16", channels_last=True)
    for on_device in (True, False):  # nvJPEG first: the path no CPU run covers, kept if the part is cut short
        report = run_e2e(E2EConfig(work_dir=options.scratch_dir / "e2e", device=options.device,
                                   decode_on_device=on_device, **sizes))
        key = "decoded on the device" if on_device else "decoded in the loader workers"
        result.figures[key] = report
        job = report["end_to_end"]["images_per_s"]
        result.add(f"spark-pretrain end to end, JPEGs {key}", job > 0,
                   f"{job:.1f} images/s; {report['verdict']}")
        result.tables.append(f"JPEGs {key}:\n\n" + format_e2e(report))
