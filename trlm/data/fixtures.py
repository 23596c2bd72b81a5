"""Local fixture sources in the real upstream schemas, with every malformed case sprinkled in.

- `smoltalk_no_think.jsonl`: smoltalk2 SFT rows (`messages`, `chat_template_kwargs`, `source`)
- `smoltalk_think.parquet`: smoltalk2 rows whose replies carry `<think>` traces
- `olmo_preference.jsonl`: OLMo preference-mix rows (`prompt` text, `chosen` / `rejected`
  conversations, `dataset`, `category`, `prompt_id`)
- `gsm8k_row` / `VERIFIABLE_BREAKS`: GSM8K rows (`question`, `answer` ending in "#### <number>") for
  `kind: verifiable` blends

Every `every`-th row is broken in the next way of its kind's list, so each drop reason appears;
`write_fixture_sources` returns where, so tests can check counts against what was injected.
`python -m trlm.data.fixtures OUT_DIR [--scale N]` writes them (bench/prepare_bench.py calls it at 10x and 100x).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

Row = dict[str, Any]
ROWS_PER_SOURCE = 2_000


def chat(i: int, think: bool) -> list[dict[str, str]]:
    reply = f"Item {i} is fine." if not think else f"<think>\nCheck item {i} step by step.\n</think>\nItem {i} is fine."
    return [{"role": "user", "content": f"Tell me about item {i}."}, {"role": "assistant", "content": reply}]


def smoltalk_row(i: int, think: bool) -> Row:
    kwargs = {"enable_thinking": think, "custom_instructions": ""}
    return {"messages": chat(i, think), "chat_template_kwargs": kwargs, "source": "fixture-smoltalk"}


def olmo_row(i: int) -> Row:
    prompt = f"Which is better for task {i}?"
    user = {"role": "user", "content": prompt}
    return {
        "prompt": prompt,
        "chosen": [user, {"role": "assistant", "content": f"<think>\nWeigh task {i}.\n</think>\nOption A."}],
        "rejected": [user, {"role": "assistant", "content": f"Option B for {i}, probably."}],
        "dataset": "fixture-olmo",
        "category": "reasoning",
        "prompt_id": f"fx-{i}",
    }


def _with_messages(row: Row, messages: Any) -> Row:
    return {**row, "messages": messages}


def _reply(row: Row, content: str) -> Row:
    return _with_messages(row, [row["messages"][0], {"role": "assistant", "content": content}])


CONVERSATION_BREAKS: dict[str, Callable[[Row], Row]] = {
    "not_a_conversation": lambda r: _with_messages(r, "just a string"),
    "missing_role": lambda r: _with_messages(r, [{"content": "hi"}, r["messages"][1]]),
    "unknown_role": lambda r: _with_messages(r, [{"role": "narrator", "content": "hi"}, r["messages"][1]]),
    "empty_content": lambda r: _reply(r, "   "),
    "no_assistant_turn": lambda r: _with_messages(r, r["messages"][:1]),
    "think_outside_assistant": lambda r: _with_messages(
        r, [{"role": "user", "content": "<think>plan</think> hi"}, r["messages"][1]]
    ),
    "think_unbalanced": lambda r: _reply(r, "<think>\nstarted but never closed. Answer."),
    "think_nested": lambda r: _reply(r, "<think>a <think>b</think> c</think> Answer."),
    # Defects that are repaired, not dropped (trlm/data/schema.py REPAIRS): the row is kept.
    "empty_think_removed": lambda r: _reply(r, "<think>\n\n</think>\nAnswer."),
    "empty_system_removed": lambda r: _with_messages(r, [{"role": "system", "content": ""}, *r["messages"]]),
    "think_opening_restored": lambda r: _reply(r, "a trace the template had opened\n</think>\nAnswer."),
}


def _pair(row: Row, chosen: list, rejected: list) -> Row:
    return {**row, "chosen": chosen, "rejected": rejected}


def _chosen_reply(row: Row, content: str) -> Row:
    return _pair(row, [row["chosen"][0], {"role": "assistant", "content": content}], row["rejected"])


PREFERENCE_BREAKS: dict[str, Callable[[Row], Row]] = {
    "chosen_equals_rejected": lambda r: _pair(r, r["chosen"], r["chosen"]),
    "no_shared_prompt": lambda r: _pair(r, r["chosen"], [{"role": "user", "content": "another"}, r["rejected"][1]]),
    "no_assistant_turn": lambda r: _pair(r, r["chosen"], r["rejected"][:1]),
    "empty_content": lambda r: _chosen_reply(r, ""),
    "think_unbalanced": lambda r: _chosen_reply(r, "<think> x"),
    "empty_think_removed": lambda r: _chosen_reply(r, "<think></think> A"),
}


def gsm8k_row(i: int) -> Row:
    return {"question": f"Sam has {i} apples and buys 3 more. How many apples does Sam have?",
            "answer": f"Sam has {i} + 3 = {i + 3} apples.\n#### {i + 3}"}  # fmt: skip


VERIFIABLE_BREAKS: dict[str, Callable[[Row], Row]] = {  # rows with `prompt` (GSM8K's question, renamed)
    "no_answer": lambda r: {**r, "answer": "Sam has some apples.\n#### "},
    "not_a_conversation": lambda r: {**r, "prompt": [{"role": "assistant", "content": "no question"}]},
    "think_outside_assistant": lambda r: {**r, "prompt": f"<think>plan</think> {r['prompt']}"},
}


# Breaks of the file rather than the row: JSON Lines sources only.
MALFORMED = {"__trlm_fixture__": "malformed_json"}
LINE_BREAKS: dict[str, Callable[[Row], Row]] = {"malformed_json": lambda r: MALFORMED}


def sprinkle(rows: list[Row], breaks: dict[str, Callable[[Row], Row]], every: int) -> dict[int, str]:
    """Breaks every `every`-th row (cycling through `breaks`, then exact duplicates); returns index -> reason."""
    injected: dict[int, str] = {}
    reasons = [*breaks, "duplicate"]
    for n, index in enumerate(range(every - 1, len(rows), every)):
        reason = reasons[n % len(reasons)]
        rows[index] = rows[index - 1] if reason == "duplicate" else breaks[reason](rows[index])
        injected[index] = reason
    return injected


def write_jsonl(rows: list[Row], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            line = json.dumps(row)
            handle.write((line[: len(line) // 2] if row is MALFORMED else line) + "\n")  # a line cut short


def write_parquet(rows: list[Row], path: Path) -> None:
    # Row groups of 1,000 rows, like the Hub's parquet exports: streaming reads one group at a time.
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1_000)


def write_fixture_sources(out_dir: Path, scale: int = 1, every: int = 25) -> dict[str, dict[int, str]]:
    """Writes the three fixture sources; returns, per file name, the injected {row index: reason}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = ROWS_PER_SOURCE * scale
    no_think = [smoltalk_row(i, think=False) for i in range(n)]
    think = [smoltalk_row(i, think=True) for i in range(n)]
    pairs = [olmo_row(i) for i in range(n)]
    # Parquet needs one type per column: no `messages` given as a plain string there.
    typed_breaks = {k: v for k, v in CONVERSATION_BREAKS.items() if k != "not_a_conversation"}
    injected = {
        "smoltalk_no_think.jsonl": sprinkle(no_think, {**CONVERSATION_BREAKS, **LINE_BREAKS}, every),
        "smoltalk_think.parquet": sprinkle(think, typed_breaks, every),
        "olmo_preference.jsonl": sprinkle(pairs, {**PREFERENCE_BREAKS, **LINE_BREAKS}, every),
    }
    write_jsonl(no_think, out_dir / "smoltalk_no_think.jsonl")
    write_parquet(think, out_dir / "smoltalk_think.parquet")
    write_jsonl(pairs, out_dir / "olmo_preference.jsonl")
    return injected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=int, default=1, help=f"rows per source = {ROWS_PER_SOURCE} x scale")
    args = parser.parse_args()
    injected = write_fixture_sources(args.out_dir, args.scale)
    for name, rows in injected.items():
        print(f"{args.out_dir / name}: {ROWS_PER_SOURCE * args.scale} rows, {len(rows)} malformed")


if __name__ == "__main__":
    main()
