"""`trlm chat`: one-shot and interactive through a pseudo-terminal, the trace dimmed, clear refusals."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from trlm.chat import DIM, RESET, ThinkPrinter, model_dir
from trlm.errors import TrlmError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_trace_is_dimmed_on_a_terminal_whatever_the_pieces_it_streams_in():
    out = Terminal()
    printer = ThinkPrinter(out)
    for piece in ["<thi", "nk>", "\n2 + 3", " = 5\n</think>", "\nThe answer is 5."]:
        printer.write(piece)
    printer.end()
    assert out.getvalue() == f"{DIM}<think>\n2 + 3 = 5\n</think>{RESET}\nThe answer is 5.\n"


def test_a_split_tag_is_not_lost_and_plain_output_has_no_colour():
    out = io.StringIO()
    printer = ThinkPrinter(out)
    for piece in ["<think>a</think>", "b"]:
        printer.write(piece)
    printer.end()
    assert out.getvalue() == "<think>a</think>b\n"


def test_what_cannot_be_chatted_with_is_one_clear_error(tmp_path):
    with pytest.raises(TrlmError, match="does not exist"):
        model_dir(str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(TrlmError, match="half-written"):
        model_dir(str(tmp_path / "half"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(TrlmError, match="has not finished"):
        model_dir(str(tmp_path / "run"))


def through_a_terminal(args: list[str], typed: list[bytes] = (), timeout: float = 120) -> tuple[int, str]:
    """Runs `trlm chat ARGS` on a pseudo-terminal; each of `typed` is sent at the next `you> ` prompt."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "trlm.cli", "chat", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip (a terminal: all three)
    os.close(terminal)
    output, deadline, to_send = b"", time.monotonic() + timeout, list(typed)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the child closed the terminal
                break
            output += chunk
            if to_send and output.count(b"you> ") > len(typed) - len(to_send):
                os.write(controller, to_send.pop(0))
        elif process.poll() is not None:
            break
    if process.poll() is None:
        process.kill()
    code = process.wait(timeout=30)
    os.close(controller)
    return code, output.decode(errors="replace")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, compose_cfg):
    from trlm.modeling import tiny_model_dir

    return tiny_model_dir(compose_cfg("experiment=demo").model.tiny, tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_one_shot_prints_the_greedy_reply_and_exits(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trlm.chat_template import chatml_template
    from trlm.config import EvalConfig
    from trlm.evaluation import generate_replies

    code, output = through_a_terminal([str(tiny_model), "--prompt", "1 + 2 = ?", "--max-new-tokens", "6"])
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = chatml_template("You are a helpful AI assistant.", generation_markers=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    (expected,) = generate_replies(model, tokenizer, [[{"role": "user", "content": "1 + 2 = ?"}]],
                                   EvalConfig(max_new_tokens=6))  # fmt: skip
    assert output.replace("\r\n", "\n") == expected + "\n"  # the reply, streamed, and nothing else


@pytest.mark.slow
def test_interactive_chat_ends_cleanly_on_ctrl_d(tiny_model):
    code, output = through_a_terminal([str(tiny_model), "--max-new-tokens", "4"], typed=[b"hello\n", b"\x04"])
    assert code == 0 and output.count("you> ") >= 2 and "Traceback" not in output


@pytest.mark.parametrize(
    ("options", "needle"),
    [(["--max-new-tokens", "-1"], "--max-new-tokens -1: it must be >= 1"),
     (["--sample", "--temperature", "-2"], "--temperature -2.0: sampling needs a finite temperature > 0")],
)  # fmt: skip
def test_generation_options_that_would_fail_in_the_thread_are_refused_first(tmp_path, options, needle):
    from trlm.chat import chat_command

    with pytest.raises(TrlmError, match=needle):
        chat_command([str(tmp_path), "--prompt", "hi", *options])


@pytest.mark.slow
def test_a_generation_that_fails_ends_the_chat_in_one_line_not_a_hang(tiny_model, monkeypatch):
    import transformers

    from trlm.chat import chat_command

    def broken(self, *args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(transformers.GenerationMixin, "generate", broken)
    with pytest.raises(TrlmError, match="generation failed: RuntimeError: CUDA error: device-side assert"):
        chat_command([str(tiny_model), "--prompt", "1 + 2 = ?", "--max-new-tokens", "4"])


@pytest.mark.slow
def test_a_model_whose_weights_are_cut_short_is_one_clear_line(tiny_model, tmp_path):
    import shutil

    from trlm.chat import chat_command

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(TrlmError, match=rf"{model} does not load as a model"):
        chat_command([str(model), "--prompt", "hi"])
