"""What autograd keeps for the backward pass in one training forward, per variant and norm kernel.

Why: peak memory on a GPU is the parameters, the optimizer state and, above all, the tensors saved for
backward. Counting those bytes needs no GPU (a tensor's size is the same on every device), so the
memory effect of a change, such as the triton norm kernel keeping its bf16 input instead of a float32
centred copy, can be measured before a GPU run, and the ratio to the dense floor (b) predicts the
peak-memory ratio a GPU would show (the rest of the peak is the same for both)."""
import dataclasses
from typing import Any, Dict, List, Sequence, Set, Tuple

import torch

from sparkmim.utils.run import autocast

from .step import PRECISIONS, VARIANT_TITLES, StepConfig, build_variant, check_run_settings, loss_of, make_images


def saved_bytes(model: torch.nn.Module, images: torch.Tensor, amp_dtype: Any) -> int:
    """Bytes of the distinct storages autograd saves during one forward of ``model`` (parameters excluded:
    they exist with or without a backward pass). Saved tensors live until the backward, so no two of
    them share an address unless they share a storage."""
    parameters: Set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(images.device, amp_dtype):
        loss_of(model(images))
    return sum(storages.values())


def measure_saved(config: StepConfig, runs: Sequence[Tuple[str, str]]) -> List[Dict[str, Any]]:
    """For each (variant, norm kernel): MiB saved for backward per image, and its ratio to the dense floor's
    (when ``dense`` is among the runs). One forward each, on the configured batch, size and precision."""
    check_run_settings(config)
    device = torch.device(config.device)
    images = make_images(config, device)
    rows = []
    for variant, kernel in runs:
        model = build_variant(variant, dataclasses.replace(config, norm_kernel=kernel))
        torch.manual_seed(config.seed)  # the same mask for every SparK variant
        total = saved_bytes(model, images, PRECISIONS[config.precision])
        rows.append({"variant": variant, "norm_kernel": kernel, "saved_mib_per_image": total / 2**20 / config.batch})
    dense = next((row["saved_mib_per_image"] for row in rows if row["variant"] == "dense"), None)
    for row in rows:
        row["to_dense"] = row["saved_mib_per_image"] / dense if dense else None
    return rows


def format_saved(rows: List[Dict[str, Any]], config: StepConfig) -> str:
    lines = [f"Saved for backward in one training forward: model {config.model}, {config.size} px, batch "
             f"{config.batch}, {config.precision}, channels_last {config.channels_last} (parameters excluded)", "",
             "| variant | norm kernel | MiB per image | to (b) |", "|---|---|---|---|"]
    for row in rows:
        ratio = "n/a" if row["to_dense"] is None else f"{row['to_dense']:.2f}"
        kernel = row["norm_kernel"] if row["variant"] == "spark" else "-"
        lines.append(f"| {VARIANT_TITLES[row['variant']]} | {kernel} | {row['saved_mib_per_image']:.2f} | {ratio} |")
    return "\n".join(lines)
