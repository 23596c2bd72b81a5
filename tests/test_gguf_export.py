"""`trlm export gguf`: a trained model as one GGUF file that answers like the model it came from."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from tests.helpers import TINY, stage
from trlm.chat_template import THINK_TOKENS, chatml_template
from trlm.errors import TrlmError
from trlm.gguf_export import TOLERANCE, export_command, export_gguf, permute, verify_gguf

SYSTEM = "Sys."
PROMPTS = ["What is 12 + 30?", "2 + 3?", "Hello there"]


@pytest.fixture(scope="module")
def stage2_model(tmp_path_factory):
    """A model directory as a stage-2 run's final/ holds it: think tokens added, the plain chat template."""
    from trlm.config import HardwareConfig
    from trlm.modeling import load_model, load_tokenizer, tiny_model_dir
    from trlm.portable import make_portable

    root = tmp_path_factory.mktemp("gguf")
    base = tiny_model_dir(TINY, root / "cache")
    tokenizer = load_tokenizer(str(base), stage(think=True))
    model = load_model(str(base), tokenizer, HardwareConfig(name="cpu"))
    final = root / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    make_portable(final, chatml_template(SYSTEM, generation_markers=False))
    return final


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_the_file_loads_back_through_transformers_and_answers_the_same(stage2_model, tmp_path, kind):
    exported = export_gguf(stage2_model, tmp_path / f"m-{kind}.gguf", kind)
    assert exported.tensors > 0 and exported.path.stat().st_size == exported.size
    check = verify_gguf(exported.path, stage2_model, kind, PROMPTS, max_new_tokens=12)
    assert check.ok and check.same_replies == len(PROMPTS) and check.top1_agreement == 1.0, str(check)
    assert 0 < check.max_logit_gap <= TOLERANCE[kind][1]  # the check sees the rounding: it could fail


def test_think_tokens_and_the_chat_template_survive_the_round_trip(stage2_model, tmp_path):
    from transformers import AutoTokenizer

    path = export_gguf(stage2_model, tmp_path / "m.gguf", "f16").path
    back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    own = AutoTokenizer.from_pretrained(stage2_model)
    for token in THINK_TOKENS:  # one token each, the same id, as in the model directory
        assert back.encode(token, add_special_tokens=False) == [own.convert_tokens_to_ids(token)]
    chat = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "<think>\n5\n</think>\n5"}]
    from jinja2 import Environment

    trlm_renders = Environment().from_string(chatml_template(SYSTEM, generation_markers=False))
    for prompt in (False, True):
        messages = chat[:1] if prompt else chat
        text = back.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert text == trlm_renders.render(messages=messages, add_generation_prompt=prompt)  # the stage's prompt
        assert back.apply_chat_template(messages, add_generation_prompt=prompt) == own.apply_chat_template(
            messages, add_generation_prompt=prompt)  # fmt: skip


def test_q_and_k_are_permuted_as_llama_cpp_expects():
    heads, dim = 2, 8  # rows of a head: its rotary pairs (i, i + half) become neighbours (2i, 2i + 1)
    weights = np.arange(heads * dim * 3, dtype=np.float32).reshape(heads * dim, 3)
    permuted = permute(weights, heads)
    half = dim // 2
    for head in range(heads):
        for i in range(half):
            assert (permuted[head * dim + 2 * i] == weights[head * dim + i]).all()
            assert (permuted[head * dim + 2 * i + 1] == weights[head * dim + half + i]).all()


def test_a_run_without_a_model_and_an_unknown_type_are_one_line(tmp_path, stage2_model):
    with pytest.raises(TrlmError, match="neither a model directory nor a finished run"):
        export_command(["gguf", str(tmp_path)])
    with pytest.raises(TrlmError, match="--type q3: choose one of"):
        export_gguf(stage2_model, tmp_path / "x.gguf", "q3")


def test_the_command_writes_beside_the_run_and_checks_the_round_trip(stage2_model, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stage2_model, run / "final")
    assert export_command(["gguf", str(run), "--type", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'export' / 'model-q8_0.gguf'}" in out and "3/3 greedy replies the same" in out


def test_a_round_trip_that_does_not_answer_alike_fails():
    from trlm.gguf_export import RoundTrip

    assert RoundTrip("q8_0", 3, 2, 0.97, 0.036).ok  # a quantised file: almost every next token, logits close
    assert not RoundTrip("f16", 3, 2, 1.0, 0.0).ok  # f16 must give the same greedy replies
    assert not RoundTrip("q8_0", 3, 3, 0.90, 0.02).ok and not RoundTrip("q8_0", 3, 3, 1.0, 0.2).ok


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_generates_from_the_file(stage2_model, tmp_path):  # pragma: no cover - an optional extra
    from llama_cpp import Llama

    path = export_gguf(stage2_model, tmp_path / "m.gguf", "f16").path
    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "2 + 3?"}], max_tokens=8,
                                       temperature=0.0)  # fmt: skip
    assert isinstance(reply["choices"][0]["message"]["content"], str)
