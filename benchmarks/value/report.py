"""The value benchmark's outputs: a Markdown table, the JSON of every number, and the label-fraction plot."""
import json
from pathlib import Path
from typing import Any, Dict, List

METHODS = ("scratch", "spark")
LABELS = {"scratch": "scratch (random init)", "spark": "SparK pre-trained"}


def _fmt(summary: Dict[str, float]) -> str:
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}" if summary.get("n", 1) > 1 else f"{summary['mean']:.2f}"


def _gain(comparison: Dict[str, Any]) -> str:
    text = f"{comparison['mean']:+.2f}"
    if comparison["n"] > 1:
        text += f" ± {comparison['std']:.2f} ({comparison['wins']}/{comparison['n']} seeds"
        text += f", p = {comparison['p']:.3f})" if comparison.get("p") is not None else ")"
    return text


def markdown_table(results: Dict[str, Any]) -> str:
    """Evaluations as rows, methods as columns, gain of SparK over scratch (paired over seeds)."""
    rows = ["| evaluation (test top-1 %) | " + " | ".join(LABELS[m] for m in METHODS) + " | SparK − scratch |",
            "|---|---|---|---|"]
    frozen = results["frozen"]
    for key, label in (("knn", f"kNN (k={results['settings']['knn_k']}, cosine), frozen"),
                       ("linear", "linear probe, frozen, all labels")):
        values = [frozen[m][key]["test"] for m in METHODS]
        rows.append(f"| {label} | {values[0]:.2f} | {values[1]:.2f} | {values[1] - values[0]:+.2f} |")
    for fraction, entry in results["finetune"].items():
        cells = [_fmt(entry[m]["test"]) for m in METHODS]
        rows.append(f"| fine-tune, {float(fraction):.0%} labels ({entry['labels_per_seed']} images, "
                    f"{entry['scratch']['test']['n']} seeds) | {cells[0]} | {cells[1]} | {_gain(entry['gain'])} |")
    return "\n".join(rows)


def write_markdown(results: Dict[str, Any], path: Path) -> Path:
    settings = results["settings"]
    timing = results["timing_s"]
    lines = [f"# SparK vs scratch on {results['data']['name']} (preset `{settings['name']}`)", "",
             markdown_table(results), "",
             f"Encoder `{settings['model']}` at {settings['input_size']} px, mask grid "
             f"{results['pretrain']['mask_grid']}, {settings['pretrain_epochs']} pre-training epochs over "
             f"{results['pretrain']['images']} images; wall time {timing['total'] / 60:.1f} min "
             f"(pre-training {timing['pretrain'] / 60:.1f}, frozen evaluations {timing['frozen'] / 60:.1f}, "
             f"fine-tuning {timing['finetune'] / 60:.1f}) on {results['machine']}.",
             "Mean ± standard deviation over seeds; the gain is the mean of the per-seed differences (same seed = "
             "same label subset), with the seeds SparK won and a paired t-test p-value.", ""]
    path.write_text("\n".join(lines))
    return path


def write_json(results: Dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(results, indent=2, sort_keys=False))
    return path


def plot_fractions(results: Dict[str, Any], path: Path) -> Path:
    """Test accuracy against label fraction (log scale), SparK and scratch, error bars = std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions: List[float] = [float(f) for f in results["finetune"]]
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for method, colour in (("scratch", "tab:gray"), ("spark", "tab:red")):
        means = [results["finetune"][str(f)][method]["test"]["mean"] for f in fractions]
        stds = [results["finetune"][str(f)][method]["test"]["std"] for f in fractions]
        axis.errorbar([100 * f for f in fractions], means, yerr=stds, marker="o", capsize=4, color=colour,
                      label=LABELS[method])
    axis.set_xscale("log")
    axis.set_xlabel("labels used for fine-tuning (% of the training set)")
    axis.set_ylabel("test top-1 accuracy (%)")
    axis.set_title(f"{results['data']['name']}: fine-tuning, mean ± std over seeds")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
