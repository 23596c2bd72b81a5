"""`trlm chat <run dir | model dir>`: talk to a model, the think trace shown apart from the answer.

One-shot with `--prompt "..."` (prints the reply and exits), else interactive: a conversation that
keeps its history, until Ctrl-D or Ctrl-C. Tokens stream as they are generated; on a terminal the
`<think>` trace is dimmed and the answer plain. The system prompt is the stage's (a finished
model's chat template carries it), or `--system`.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path

from trlm.errors import TrlmError
from trlm.run_dir import FINAL, SUMMARY

DIM, RESET = "\033[2m", "\033[0m"


def model_dir(given: str) -> Path:
    """The model a path names: a model directory, or a run directory's finished `final/`."""
    path = Path(given).expanduser()
    if not path.exists():
        raise TrlmError(f"{given} does not exist")
    if (path / "config.json").exists():
        if not list(path.glob("*.safetensors")) and not list(path.glob("*.bin")):
            raise TrlmError(f"{given} holds a config but no weights: a half-written model directory")
        return path
    if (path / FINAL / "config.json").exists() and (path / SUMMARY).exists():
        return path / FINAL
    if (path / "checkpoints").exists() or (path / FINAL).exists():
        raise TrlmError(f"{given} is a run that has not finished (no {SUMMARY}): nothing to chat with yet")
    raise TrlmError(f"{given} is neither a model directory nor a run directory")


class ThinkPrinter:
    """Prints streamed text, dimming what lies between <think> and </think> on a terminal.

    A tag may arrive split across pieces: a piece's tail that could begin one is held back until
    the next piece says whether it does."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self.in_think, self.pending = False, ""
        self.color = self.out.isatty()

    def write(self, text: str) -> None:
        from trlm.chat_template import THINK_END, THINK_START

        text, self.pending = self.pending + text, ""
        while text:
            tag = THINK_END if self.in_think else THINK_START
            before, found, after = text.partition(tag)
            if not found:
                held = next((n for n in range(len(tag) - 1, 0, -1) if text.endswith(tag[:n])), 0)
                self.out.write(text[: len(text) - held])
                self.pending = text[len(text) - held :]
                break
            self.out.write(before)
            self.in_think = not self.in_think
            self.out.write(((DIM + tag) if self.in_think else (tag + RESET)) if self.color else tag)
            text = after
        self.out.flush()

    def end(self) -> None:
        self.out.write(self.pending + (RESET if self.color and self.in_think else "") + "\n")
        self.in_think, self.pending = False, ""
        self.out.flush()


def reply(model, tokenizer, messages: list[dict[str, str]], args: argparse.Namespace) -> str:
    from transformers import TextIteratorStreamer

    from trlm.chat_template import cut_at_turn_end, turn_end_ids

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample, "streamer": streamer,
                "eos_token_id": turn_end_ids(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "temperature": args.temperature if args.sample else None, "top_p": None, "top_k": None}  # fmt: skip
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            model.generate(**inputs, **settings)
        except BaseException as error:  # said in the main thread, which would otherwise wait on the streamer
            failure.append(error)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    printer, text = ThinkPrinter(), ""
    for piece in streamer:
        piece = cut_at_turn_end(piece)  # the streamer decodes the token generation stopped at too
        text += piece
        printer.write(piece)
    thread.join()
    printer.end()
    if failure:
        error = failure[0]
        raise TrlmError(
            f"generation failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )
    return text


def check_options(args: argparse.Namespace) -> None:
    """Generation settings that would fail inside the generation thread, refused before it starts."""
    if args.max_new_tokens < 1:
        raise TrlmError(f"--max-new-tokens {args.max_new_tokens}: it must be >= 1")
    if args.sample and not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise TrlmError(f"--temperature {args.temperature}: sampling needs a finite temperature > 0")


def load_chat_model(directory: Path):
    """The model and tokenizer of a model directory; one that does not load is one line naming it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    except Exception as error:  # truncated weights, a garbage config: transformers' and safetensors' own errors
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrlmError(
            f"{directory} does not load as a model ({type(error).__name__}: {said}): is it complete?"
        ) from None
    return model, tokenizer


def chat_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trlm chat", description="talk to a model (Ctrl-D or Ctrl-C ends)")
    parser.add_argument("model", help="a run directory (its final/) or a model directory")
    parser.add_argument("--prompt", help="one message: print the reply and exit")
    parser.add_argument("--system", help="a system prompt (default: the stage's, from the chat template)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args(argv)
    check_options(args)
    directory = model_dir(args.model)
    from transformers.utils import logging as hf_logging

    from trlm.chat_template import chatml_template

    hf_logging.disable_progress_bar()  # the conversation is the output
    model, tokenizer = load_chat_model(directory)
    if not tokenizer.chat_template:  # a base model without one: trlm's ChatML
        tokenizer.chat_template = chatml_template("You are a helpful AI assistant.", generation_markers=False)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        reply(model, tokenizer, [*messages, {"role": "user", "content": args.prompt}], args)
        return 0
    try:
        while True:
            said = input("you> ")
            if not said.strip():
                continue
            messages.append({"role": "user", "content": said})
            messages.append({"role": "assistant", "content": reply(model, tokenizer, messages, args)})
    except (EOFError, KeyboardInterrupt):
        print()
    return 0
