"""Scoring replies against references: the one place that says what a right, well-formed answer is.

A reply is *well-formed* when it opens with one `<think>` block holding a non-empty trace, closes it
once, and follows it with a non-empty final answer. Answer accuracy compares the final answer
(the text after `</think>`, or the whole reply for a stage without thinking) with the reference's,
whitespace-normalised. A stage's evaluation, the sweep objective and the `trlm_demo` lm-eval task
all score here, so they cannot disagree. Light: plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from trlm.chat_template import THINK_END, THINK_START

# What score_replies returns (a stage's own evaluation; `start_<name>` the same for its start model).
REPLY_METRICS = ("eval_prompts", "answer_accuracy", "answer_accuracy_stripped", "think_leak_rate",
                 "think_format_rate", "think_empty_rate", "mean_trace_words")  # fmt: skip


@dataclass(frozen=True)
class ParsedReply:
    well_formed: bool
    answer: str


def normalise(text: str) -> str:
    return " ".join(text.split())


def parse_think_reply(text: str) -> ParsedReply:
    """Splits `<think>trace</think> answer`; anything else (nested, unclosed, empty parts) is malformed."""
    stripped = text.strip()
    if not stripped.startswith(THINK_START) or stripped.count(THINK_START) != 1 or stripped.count(THINK_END) != 1:
        return ParsedReply(False, normalise(stripped))
    trace, _, answer = stripped[len(THINK_START) :].partition(THINK_END)
    return ParsedReply(bool(trace.strip()) and bool(answer.strip()), normalise(answer))


def split_last_reply(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to its last assistant turn, and that turn's content (the reference)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def answer_of(text: str) -> str:
    """The final answer with any trace stripped: the text after the last `</think>` (or all of it)."""
    return normalise(text.rpartition(THINK_END)[2] if THINK_END in text else text)


def score_replies(replies: list[str], references: list[str], expect_think: bool) -> dict[str, float]:
    """The think-format metrics, one place for the stage evaluation and the sweep objective.

    answer_accuracy: well-formed (when thinking) and the right answer; answer_accuracy_stripped:
    the right answer after stripping whatever trace there is; think_format_rate: well-formed share;
    think_empty_rate: replies whose trace is empty; think_leak_rate: think tags where none belong
    (in the answer after the trace, a second block, or any tag in a stage without thinking);
    mean_trace_words: words inside well-formed traces, averaged over them.
    """
    n = len(replies)
    correct = stripped = well_formed = empty = leaked = trace_words = 0
    for reply, reference in zip(replies, references, strict=True):
        stripped += answer_of(reply) == answer_of(reference)
        if not expect_think:
            correct += normalise(reply) == normalise(reference)
            leaked += THINK_START in reply or THINK_END in reply
            continue
        parsed, wanted = parse_think_reply(reply), parse_think_reply(reference)
        well_formed += parsed.well_formed
        correct += parsed.well_formed and parsed.answer == wanted.answer
        trace = (
            reply.strip()[len(THINK_START) :].partition(THINK_END)[0] if reply.strip().startswith(THINK_START) else ""
        )
        empty += reply.strip().startswith(THINK_START) and THINK_END in reply and not trace.strip()
        after = reply.partition(THINK_END)[2]
        leaked += THINK_START in after or THINK_END in after
        trace_words += len(trace.split()) if parsed.well_formed else 0
    metrics = {"eval_prompts": float(n), "answer_accuracy": correct / n, "answer_accuracy_stripped": stripped / n,
               "think_leak_rate": leaked / n}  # fmt: skip
    if expect_think:
        metrics.update(think_format_rate=well_formed / n, think_empty_rate=empty / n,
                       mean_trace_words=trace_words / well_formed if well_formed else 0.0)  # fmt: skip
    return metrics
