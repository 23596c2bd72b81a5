"""`trlm results outputs/<run.name>`: where each stage's checkpoint and metrics went, and its figures."""

from __future__ import annotations

import json
from pathlib import Path

from trlm.run_dir import METRICS, SUMMARY

STAGE_ORDER = ("sft", "sft_think", "dpo")
COLUMNS = (  # (header, summary metric)
    ("steps", None),
    ("train loss", "train_loss"),
    ("eval loss", "eval_loss"),
    ("acc@start", "start_answer_accuracy"),  # the stage's start model on the same held-out prompts
    ("acc", "answer_accuracy"),
    ("format@start", "start_think_format_rate"),
    ("format", "think_format_rate"),
    ("reward acc", "eval_rewards/accuracies"),
    ("reward margin", "eval_rewards/margins"),
)


def stage_summaries(experiment_dir: Path) -> list[tuple[str, dict]]:
    found = {p.parent.name: json.loads(p.read_text()) for p in experiment_dir.glob(f"*/{SUMMARY}")}
    ordered = [s for s in STAGE_ORDER if s in found] + sorted(set(found) - set(STAGE_ORDER))
    return [(name, found[name]) for name in ordered]


def format_table(rows: list[tuple[str, dict]]) -> str:
    header = ["stage", *(title for title, _ in COLUMNS)]
    lines = [header]
    for name, summary in rows:
        metrics = summary["metrics"]
        cells = [name, str(summary["global_step"])]
        for _, key in COLUMNS[1:]:
            cells.append(f"{metrics[key]:.3f}" if key in metrics else "-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def print_results(experiment_dir: Path) -> int:
    rows = stage_summaries(experiment_dir)
    if not rows:
        print(f"no finished stage under {experiment_dir} (a finished stage has {SUMMARY})")
        return 1
    for name, summary in rows:
        print(f"{name}: checkpoint {summary['final_model']}")
        print(f"{' ' * len(name)}  metrics    {Path(summary['final_model']).parent / METRICS}")
    print()
    print(format_table(rows))
    return 0
