"""The demo's synthetic task: additions of small numbers, small enough for a tiny model to learn on a CPU.

The three blends mirror the report's curriculum and the real sources' schemas:
- stage 1 (smoltalk2 rows, no thoughts): one-step facts, "What is 12 + 7?" -> "12 + 7 = 19."
- stage 2 (smoltalk2 rows with <think>): chains of 2-3 digits, worked step by step inside
  <think>...</think>, then "The answer is N."
- stage 3 (OLMo preference rows): a correct, well-formed trace (chosen) against a trace with a
  slip, a missing or unclosed think block, or an answer that contradicts the trace (rejected).
- stage 4 (prompts with verifiable answers, for GRPO): three-term chains in phrasings of their own,
  the reference being the final answer a well-formed reply ends with ("The answer is N.").

Every prompt appears once per blend, so the rows a blend holds out for evaluation are unseen.
`python -m trlm.demo.task` rewrites the shipped JSONL files in trlm/demo/data from this code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
SOURCE = "trlm-demo-arithmetic"

Message = dict[str, str]

_FACT_TEMPLATES = ("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}.", "{a} plus {b} is?")
_CHAIN_TEMPLATES = ("What is {expr}?", "Compute {expr}.", "Add up {expr}.")


def chat(prompt: str, answer: str) -> list[Message]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def think_answer(trace: list[str], answer: int) -> str:
    return "<think>\n" + "\n".join(trace) + "\n</think>\nThe answer is " + str(answer) + "."


def worked_trace(terms: tuple[int, ...]) -> tuple[list[str], int]:
    """The step-by-step partial sums: [4, 7, 5] -> ["4 + 7 = 11", "11 + 5 = 16"], 16."""
    total, steps = terms[0], []
    for term in terms[1:]:
        steps.append(f"{total} + {term} = {total + term}")
        total += term
    return steps, total


def fact_rows() -> list[dict[str, Any]]:
    """Every one-step fact the chains need (a <= 27, b <= 9), once per phrasing."""
    rows = []
    for a in range(28):
        for b in range(10):
            for template in _FACT_TEMPLATES:
                rows.append(
                    {
                        "messages": chat(template.format(a=a, b=b), f"{a} + {b} = {a + b}."),
                        "chat_template_kwargs": {"enable_thinking": False},
                        "source": SOURCE,
                    }
                )
    return rows


def _chains(rng: random.Random, lengths: tuple[int, ...], count: int) -> list[tuple[int, ...]]:
    space = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    if 3 in lengths:
        space += [(a, b, c) for a in range(1, 10) for b in range(1, 10) for c in range(1, 10)]
    space = [terms for terms in space if len(terms) in lengths]
    return rng.sample(space, min(count, len(space)))


def chain_prompt(rng: random.Random, terms: tuple[int, ...]) -> str:
    return rng.choice(_CHAIN_TEMPLATES).format(expr=" + ".join(map(str, terms)))


def think_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for terms in _chains(rng, (2, 3), count):
        trace, total = worked_trace(terms)
        rows.append(
            {
                "messages": chat(chain_prompt(rng, terms), think_answer(trace, total)),
                "chat_template_kwargs": {"enable_thinking": True},
                "source": SOURCE,
            }
        )
    return rows


def rejected_answer(rng: random.Random, terms: tuple[int, ...]) -> tuple[str, str]:
    """A plausible but worse completion, and the name of its flaw."""
    trace, total = worked_trace(terms)
    flaw = rng.choice(("slip", "no_think", "unclosed", "contradiction"))
    if flaw == "slip":  # one step miscounted, the error carried to the answer
        step = rng.randrange(len(trace))
        delta = rng.choice((-2, -1, 1, 2))
        partial, wrong = terms[0], []
        for i, term in enumerate(terms[1:]):
            result = partial + term + (delta if i == step else 0)
            wrong.append(f"{partial} + {term} = {result}")
            partial = result
        return think_answer(wrong, partial), flaw
    if flaw == "no_think":
        return f"The answer is {total + rng.choice((-1, 0, 1))}.", flaw
    if flaw == "unclosed":
        return "<think>\n" + "\n".join(trace) + f"\nThe answer is {total}.", flaw
    return think_answer(trace, total + rng.choice((-3, -1, 1, 3))), flaw


def preference_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    rows = []
    for index, terms in enumerate(_chains(rng, (3,), count)):
        prompt = chain_prompt(rng, terms)
        trace, total = worked_trace(terms)
        rejected, flaw = rejected_answer(rng, terms)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chat(prompt, think_answer(trace, total)),
                "rejected": chat(prompt, rejected),
                "dataset": SOURCE,
                "category": flaw,
                "prompt_id": f"demo-{index:05d}",
            }
        )
    return rows


def prompts_of(rows: list[dict[str, Any]]) -> set[str]:
    return {row["messages"][0]["content"] if "messages" in row else row["prompt"] for row in rows}


def verifiable_rows(rng: random.Random, count: int, taken: set[str]) -> list[dict[str, Any]]:
    """Stage 4's prompts and reference answers: three-term chains, the task stages 2 and 3 teach, each
    phrased as no other blend phrases that chain (`taken`): no row of another stage, held-out ones
    included, is a row of this one. (The tiny model answers only the phrasings it was taught.)"""
    rows = []
    for terms in _chains(rng, (3,), count):
        _, total = worked_trace(terms)
        expr = " + ".join(map(str, terms))
        free = [prompt for prompt in (t.format(expr=expr) for t in _CHAIN_TEMPLATES) if prompt not in taken]
        if free:
            rows.append({"prompt": [{"role": "user", "content": rng.choice(free)}],
                         "answer": f"The answer is {total}.", "source": SOURCE})  # fmt: skip
    return rows


def demo_blends(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    blends = {
        "sft": fact_rows(),
        "sft_think": think_rows(rng, count=800),
        "dpo": preference_rows(rng, count=729),
    }
    taken = prompts_of(blends["sft_think"]) | prompts_of(blends["dpo"])
    blends["grpo"] = verifiable_rows(rng, count=729, taken=taken)  # drawn last: the other blends stay as they were
    return blends


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(out_dir: Path = DATA_DIR) -> None:
    for name, rows in demo_blends().items():
        write_jsonl(rows, out_dir / f"{name}.jsonl")
        print(f"wrote {len(rows)} rows to {out_dir / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
