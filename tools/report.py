"""``spark-report``: the paper's tables with our numbers beside them, as Markdown.

``spark-report RUN_DIR... [--plot chart.png] [--json]`` reads the result files the pipeline stages
write (see :mod:`sparkmim.tools.results`), places each result on the paper row with the same model,
input size and schedule, and prints the difference. Results with no paper row (other models, smoke
runs) are listed in their own table. The paper's numbers are data: ``paper_numbers.json``.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sparkmim.utils.errors import UserError, run_command
from sparkmim.utils.logging_setup import setup_command_logging
from sparkmim.utils.output_paths import check_output_file

from .results import CocoResult, ImageNetResult, Results, collect

PAPER_FILE = Path(__file__).resolve().parent / "paper_numbers.json"


def load_paper() -> Dict[str, Any]:
    return json.loads(PAPER_FILE.read_text())


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cell(value: object) -> str:
    """A cell or label for a value a result file may lack (model, schedule, input size): '?' rather than 'None'."""
    return "?" if value is None else str(value)


def diff(ours: Optional[float], paper: Optional[float]) -> str:
    return "–" if ours is None or paper is None else f"{ours - paper:+.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _best_imagenet(results: List[ImageNetResult], model: str, size: int) -> Tuple[Optional[ImageNetResult], list]:
    """The best run for a paper row, and all runs for it (shown once, in that row): 1000-class fine-tunings only."""
    matches = [r for r in results if r.model == model and (r.input_size or 224) == size and r.best is not None
               and r.comparable_to_paper]
    return (max(matches, key=lambda r: r.best) if matches else None), matches


def imagenet_section(paper: Dict[str, Any], results: Results, pairs: List[Tuple[str, Optional[float], float]]) -> str:
    rows, used = [], set()
    for row in paper["imagenet"]["rows"]:
        ours, matches = _best_imagenet(results.imagenet, row["model"], row["input_size"])
        used.update(id(r) for r in matches)
        if ours is not None:
            pairs.append((f"{row['label']} top-1", row["spark"], ours.best))
        rows.append([row["label"], str(row["input_size"]), fmt(row["supervised"]), fmt(row["spark"]),
                     fmt(ours.best if ours else None, 2), diff(ours.best if ours else None, row["spark"]),
                     ours.run if ours else ""])
    text = f"### {paper['imagenet']['title']}\n\n" + table(
        ["model", "input", "supervised (paper)", "SparK (paper)", "ours", "ours − paper", "run"], rows)
    others = [r for r in results.imagenet if id(r) not in used]
    pairs.extend((f"{cell(r.model)} top-1", None, r.best) for r in others if r.best is not None)
    if others:
        text += ("\n\nOther classification runs (no paper row: another model or input size, a linear probe, or "
                 "not 1000 classes):\n\n") + table(
            ["model", "input", "protocol", "classes", "top-1", "EMA top-1", "epochs", "run"],
            [[cell(r.model), cell(r.input_size), r.protocol, cell(r.classes),
              fmt(r.top1, 2), fmt(r.ema_top1, 2), f"{cell(r.epochs_done)}/{cell(r.epochs)}", r.run] for r in others])
    return text


def _best_coco(results: List[CocoResult], model: str, schedule: str,
               frameworks: Tuple[str, ...]) -> Tuple[Optional[CocoResult], list]:
    matches = [r for r in results if r.model == model and r.schedule == schedule and r.box is not None
               and r.framework.lower().startswith(frameworks)]
    return (max(matches, key=lambda r: r.box) if matches else None), matches


def coco_section(key: str, frameworks: Tuple[str, ...], paper: Dict[str, Any], results: Results,
                 used: set, pairs: List[Tuple[str, Optional[float], float]]) -> str:
    section = paper[key]
    rows = []
    for row in section["rows"]:
        ours, matches = _best_coco(results.coco, section["model"], row["schedule"], frameworks) \
            if row.get("ours") else (None, [])
        used.update(id(r) for r in matches)
        if ours is not None:
            pairs.append((f"{section['model']} {row['schedule']} AP box", row["box"], ours.box))
            if ours.mask is not None:
                pairs.append((f"{section['model']} {row['schedule']} AP mask", row["mask"], ours.mask))
        rows.append([row["pretraining"], row["schedule"], fmt(row["box"]), fmt(row["mask"]),
                     fmt(ours.box if ours else None), fmt(ours.mask if ours else None),
                     diff(ours.box if ours else None, row["box"]), diff(ours.mask if ours else None, row["mask"]),
                     ours.run if ours else ""])
    return f"### {section['title']}\n\n" + table(
        ["pre-training", "schedule", "AP box (paper)", "AP mask (paper)", "ours AP box", "ours AP mask",
         "Δ box", "Δ mask", "run"], rows)


def other_coco(results: Results, used: set, pairs: List[Tuple[str, Optional[float], float]]) -> str:
    others = [r for r in results.coco if id(r) not in used]
    pairs.extend((f"{cell(r.model)} {cell(r.schedule)} AP box", None, r.box) for r in others if r.box is not None)
    if not others:
        return ""
    return "Other COCO runs (no paper row):\n\n" + table(
        ["framework", "model", "schedule", "AP box", "AP mask", "run"],
        [[r.framework, cell(r.model), cell(r.schedule), fmt(r.box), fmt(r.mask), r.run] for r in others])


def pretrain_section(paper: Dict[str, Any], results: Results) -> str:
    if not results.pretrain:
        return ""
    reference = {row["model"]: row for row in paper["pretrain"]["rows"]}
    rows = []
    for r in results.pretrain:
        ref = reference.get(r.model or "")
        ref_text = f"{ref['img_per_s_per_gpu']} img/s per {ref['gpu']} ({ref['precision']})" if ref else "–"
        rows.append([cell(r.model), f"{r.epochs_done}/{cell(r.epochs)}", fmt(r.final_loss, 4), fmt(r.img_per_s, 1),
                     ref_text, r.run])
    return "### Pre-training\n\n" + table(
        ["model", "epochs", "final epoch loss", "img/s (whole job)", "paper reference", "run"], rows)


def value_section(results: Results) -> str:
    """``spark-bench value`` runs: SparK vs scratch on the same data and budget."""
    from sparkmim.benchmarks.value.report import markdown_table

    parts = []
    for r in results.value:
        settings, data = r.payload["settings"], r.payload.get("data", {})
        parts.append(f"{data.get('name', '?')}, preset `{settings.get('name')}`, encoder `{settings.get('model')}` "
                     f"({r.run}):\n\n{markdown_table(r.payload)}")
    return "### Value of pre-training (SparK vs scratch)\n\n" + "\n\n".join(parts) if parts else ""


def render(paper: Dict[str, Any], results: Results) -> Tuple[str, List[Tuple[str, Optional[float], float]]]:
    """The Markdown report and the (label, paper, ours) pairs for the chart."""
    pairs: List[Tuple[str, Optional[float], float]] = []
    used: set = set()
    parts = ["## SparK: paper vs ours", imagenet_section(paper, results, pairs),
             coco_section("coco_d2", ("detectron2",), paper, results, used, pairs),
             coco_section("coco_mmdet", ("mm",), paper, results, used, pairs),
             other_coco(results, used, pairs), pretrain_section(paper, results),
             value_section(results)]
    return "\n\n".join(p for p in parts if p) + "\n", pairs


def plot(pairs: List[Tuple[str, Optional[float], float]], out: Path) -> Path:
    """Grouped bars, paper vs ours; runs without a paper row are drawn as 'ours' only."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    bars = [b for b in pairs if b[2] is not None]
    if not bars:
        raise ValueError("no results to plot")
    labels = [b[0] for b in bars]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(bars) + 1), 4), dpi=100)
    positions = range(len(bars))
    axis.bar([p - 0.2 for p in positions], [b[1] or 0 for b in bars], width=0.4, label="paper", color="#9aa7b8")
    axis.bar([p + 0.2 for p in positions], [b[2] for b in bars], width=0.4, label="ours", color="#d9822b")
    axis.set_xticks(list(positions))
    axis.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("top-1 / AP (%)")
    axis.set_title("SparK: paper vs ours")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-report",
        description="Print the SparK paper's tables with the results of your runs beside them (Markdown).")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (searched recursively for summary.json, "
                        "coco_results.json and pre-training metrics)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also write a bar chart of ours vs paper")
    parser.add_argument("--json", action="store_true", help="print the collected results as JSON instead")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown to this file")
    return parser


def report(args: argparse.Namespace) -> int:
    if args.output:  # before the runs are read; writing a folder's name was a traceback after the table
        check_output_file(args.output, "--output", example="report.md")
    results = collect(args.runs)
    if results.empty():
        raise UserError(f"no result files (summary.json, coco_results.json, pre-training metrics.jsonl, value "
                        f"benchmark results.json) under {', '.join(map(str, args.runs))}")
    if args.json:
        print(json.dumps(results.as_dict(), indent=2))
        return 0
    markdown, pairs = render(load_paper(), results)
    print(markdown, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(markdown)
    if args.plot:
        from sparkmim.utils.pictures import picture_path  # torch and matplotlib: only for a chart

        if any(ours is not None for _, _, ours in pairs):
            print(f"\nchart: {plot(pairs, picture_path(args.plot, '--plot'))}")
        else:
            print("\nno top-1 or AP results yet: no chart written")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_command_logging(logging.WARNING)
    return run_command("spark-report", lambda: report(args), statuses={FileNotFoundError: 2})


if __name__ == "__main__":
    sys.exit(main())
