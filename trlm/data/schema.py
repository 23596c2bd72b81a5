"""One row schema per blend kind, and the checks a row must pass to be in it.

Conversations: `messages` = [{role, content}, ...].
Preferences: `prompt`, `chosen`, `rejected` = message lists; `prompt` is the longest prefix the
source's chosen and rejected conversations share, `chosen` / `rejected` what follows it.
Both carry `source` (the upstream dataset tag, when the source has one) and the provenance
columns `_source_dataset`, `_source_subset`, `_source_split`, `_source_index`.

`normalise` returns the row in its schema, or raises `Dropped` naming the first problem found;
preparation counts those per reason and per source instead of failing. Defects real data has that
change nothing a model learns are repaired instead, and counted per reason the same way: an empty
system message (= none), an empty `<think></think>` block, a trace whose opening `<think>` the
generating template had inserted. In a preference pair the
think checks apply to the prompt and the chosen reply only: a malformed trace is a fair reason
for a reply to be the rejected one.
"""

from __future__ import annotations

import re
from typing import Any

from datasets import Features, List, Value

from trlm.chat_template import THINK_END, THINK_START
from trlm.config import DataKind

ROLES = ("system", "user", "assistant", "tool")
MESSAGES = List({"role": Value("string"), "content": Value("string")})
PROVENANCE = {
    "source": Value("string"),
    "_source_dataset": Value("string"),
    "_source_subset": Value("string"),
    "_source_split": Value("string"),
    "_source_index": Value("int64"),
}
FEATURES = {
    DataKind.conversation: Features({"messages": MESSAGES, **PROVENANCE}),
    DataKind.preference: Features({"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, **PROVENANCE}),
    DataKind.verifiable: Features({"prompt": MESSAGES, "answer": Value("string"), **PROVENANCE}),
}
# Every reason a row can be dropped for (the first one a row hits is counted).
DROP_REASONS = (
    "malformed_json",
    "not_a_conversation",
    "missing_role",
    "unknown_role",
    "empty_content",
    "no_assistant_turn",
    "think_outside_assistant",
    "think_unbalanced",
    "think_nested",
    "no_shared_prompt",
    "chosen_equals_rejected",
    "duplicate",
    "no_answer",
    "row_too_long",  # more characters than data.max_row_chars (a blend setting, so no fixture of its own)
)
# Every repair a row can get (counted per reason, like drops; a row may get several).
REPAIRS = ("empty_system_removed", "empty_think_removed", "think_opening_restored")
_THINK_TAG = re.compile(re.escape(THINK_START) + "|" + re.escape(THINK_END))
_EMPTY_THINK = re.compile(re.escape(THINK_START) + r"\s*" + re.escape(THINK_END) + r"\s*")


class Dropped(Exception):
    def __init__(self, reason: str) -> None:
        assert reason in DROP_REASONS, reason
        super().__init__(reason)
        self.reason = reason


def text_of(content: Any) -> str | None:
    """Message content as text: strings as they are, multimodal part lists as their text parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return str(content)


def think_problem(text: str) -> str | None:
    """What is wrong with the <think> blocks of an assistant reply, if anything."""
    depth = 0
    for tag in _THINK_TAG.finditer(text):
        if tag.group() == THINK_START:
            if depth:
                return "think_nested"
            depth = 1
        else:
            if not depth:
                return "think_unbalanced"
            depth = 0
    return "think_unbalanced" if depth else None


def repair_reply(content: str, repairs: list[str]) -> str:
    """An assistant reply with its harmless defects fixed (each fix named in `repairs`).

    An empty `<think></think>` block (in an earlier turn, or a reply with no trace) says nothing:
    removed. A reply that closes a trace it never opened had its `<think>` inserted by the template
    it was generated with: restored.
    """
    stripped = _EMPTY_THINK.sub("", content)
    if stripped != content:
        repairs.append("empty_think_removed")
        content = stripped
    if THINK_START not in content and content.count(THINK_END) == 1 and content.split(THINK_END)[0].strip():
        repairs.append("think_opening_restored")
        content = f"{THINK_START}\n{content.lstrip()}"
    return content


def messages_of(raw: Any, repairs: list[str] | None = None) -> list[dict[str, str]]:
    """Checked {role, content} messages, harmless defects repaired; raises Dropped on the first problem."""
    repairs = [] if repairs is None else repairs
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise Dropped("not_a_conversation")
    messages = []
    for message in raw:
        role, content = message.get("role"), text_of(message.get("content"))
        if not role:
            raise Dropped("missing_role")
        if role not in ROLES:
            raise Dropped("unknown_role")
        if role == "system" and (content is None or not content.strip()):
            repairs.append("empty_system_removed")  # an empty system message is an absent one
            continue
        if role == "assistant" and content:
            content = repair_reply(content, repairs)
        if content is None or not content.strip():
            raise Dropped("empty_content")
        messages.append({"role": role, "content": content})
    if not messages:
        raise Dropped("not_a_conversation")
    return messages


def check_turns(messages: list[dict[str, str]], need_assistant: bool = True) -> None:
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise Dropped("no_assistant_turn")
    for message in messages:
        if message["role"] != "assistant":
            if _THINK_TAG.search(message["content"]):
                raise Dropped("think_outside_assistant")
        elif problem := think_problem(message["content"]):
            raise Dropped(problem)


def shared_prefix(a: list[dict[str, str]], b: list[dict[str, str]]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def normalise_conversation(row: dict[str, Any], repairs: list[str]) -> dict[str, Any]:
    messages = messages_of(row.get("messages"), repairs)
    check_turns(messages)
    return {"messages": messages}


def normalise_preference(row: dict[str, Any], repairs: list[str]) -> dict[str, Any]:
    prompt = row.get("prompt") if isinstance(row.get("prompt"), list) else []  # already split: prompt + completions
    chosen = messages_of(prompt + list(row.get("chosen") or []), repairs)
    rejected = messages_of(prompt + list(row.get("rejected") or []), [])  # the prompt's repairs counted once
    if chosen == rejected:
        raise Dropped("chosen_equals_rejected")
    cut = shared_prefix(chosen, rejected)
    if not any(m["role"] == "user" for m in chosen[:cut]):
        raise Dropped("no_shared_prompt")
    check_turns(chosen[:cut], need_assistant=False)
    for completion in (chosen[cut:], rejected[cut:]):
        if not completion or completion[0]["role"] != "assistant":
            raise Dropped("no_assistant_turn")
    # A malformed trace is a fair reason to reject a reply: only the chosen side must be well-formed.
    check_turns(chosen[cut:])
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


GSM8K_ANSWER = "####"  # GSM8K-style references end in "#### <answer>" after their worked solution


def normalise_verifiable(row: dict[str, Any], repairs: list[str]) -> dict[str, Any]:
    """A prompt to answer (messages, or a plain question as one user turn) and the reference a reward checks
    replies against (`answer`, or `solution`; a GSM8K-style answer keeps what follows its `####`)."""
    raw = row.get("prompt")
    prompt = messages_of([{"role": "user", "content": raw}] if isinstance(raw, str) else raw, repairs)
    while prompt and prompt[-1]["role"] == "assistant":  # a reply in the prompt is the reference, not a prompt
        prompt = prompt[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise Dropped("not_a_conversation")
    check_turns(prompt, need_assistant=False)
    answer = row.get("answer", row.get("solution"))
    answer = answer.rpartition(GSM8K_ANSWER)[2].strip() if isinstance(answer, str) else None
    if not answer:
        raise Dropped("no_answer")
    return {"prompt": prompt, "answer": answer}


NORMALISERS = {DataKind.conversation: normalise_conversation, DataKind.preference: normalise_preference,
               DataKind.verifiable: normalise_verifiable}  # fmt: skip


def normalise(row: dict[str, Any], kind: DataKind, repairs: list[str] | None = None) -> dict[str, Any]:
    """The row in the kind's schema (without provenance), or Dropped; what was repaired goes to `repairs`."""
    normalised = NORMALISERS[kind](row, [] if repairs is None else repairs)
    source = row.get("source")
    normalised["source"] = None if source is None else str(source)
    return normalised
