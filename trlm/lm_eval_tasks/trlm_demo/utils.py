"""The trlm_demo task's data and scoring (lm-eval imports this file by its task YAML's `!function`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROWS = Path(__file__).with_name("trlm_demo.jsonl")


def load_docs(**_: Any):
    """The task's rows: {prompt, reference}, the held-out arithmetic shipped beside this file."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    return DatasetDict(test=Dataset.from_list(rows))


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """One reply scored as a stage scores its held-out rows (trlm.scoring.score_replies)."""
    from trlm.chat_template import cut_at_turn_end
    from trlm.scoring import score_replies

    reply = cut_at_turn_end(results[0])
    scores = score_replies([reply], [doc["reference"]], expect_think=True)
    well_formed = scores["think_format_rate"]
    return {
        "answer_accuracy": scores["answer_accuracy"],
        "answer_accuracy_stripped": scores["answer_accuracy_stripped"],
        "think_format_rate": well_formed,
        "think_empty_rate": scores["think_empty_rate"],
        "think_leak_rate": scores["think_leak_rate"],
        "trace_words": scores["mean_trace_words"],  # per reply (0 when malformed): a mean over all replies
    }


def write_rows() -> None:
    """Rewrites trlm_demo.jsonl: the held-out rows of the demo's stage-2 blend (prepared if needed)."""
    from trlm.data.blend import load_blend
    from trlm.plan import plan_for
    from trlm.trainer_kinds import sft_held_out

    plan = plan_for(["experiment=demo", "stage=sft_think"])
    blend, _ = load_blend(plan.data, plan.blends_dir)
    lines = []
    for conversation in sft_held_out(blend["eval"]):
        *prompt, reply = conversation
        assert [m["role"] for m in prompt] == ["user"], "the task's rows are single-turn"
        lines.append(json.dumps({"prompt": prompt[0]["content"], "reference": reply["content"]}) + "\n")
    ROWS.write_text("".join(lines))
    print(f"wrote {len(lines)} rows to {ROWS}")


if __name__ == "__main__":
    write_rows()
