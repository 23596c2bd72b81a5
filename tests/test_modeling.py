"""Start-model handling: think tokens, embedding growth, the tiny demo model, offline Hub errors."""

from __future__ import annotations

import time

import pytest

from tests.helpers import TINY, stage
from trlm.chat_template import THINK_TOKENS
from trlm.config import HardwareConfig
from trlm.errors import TrlmError
from trlm.model_source import resolve_pretrained
from trlm.modeling import load_model, load_tokenizer, stage_tokenizer, tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(TINY, tmp_path_factory.mktemp("cache"))


def test_tiny_model_is_built_once_and_cached(tiny_dir):
    assert (tiny_dir / "config.json").exists() and (tiny_dir / "tokenizer.json").exists()
    mtime = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir(TINY, tiny_dir.parent) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert not list(tiny_dir.parent.glob("*.tmp"))


def test_base_tokenizer_lacks_think_tokens_like_smollm2(tiny_dir):
    tokenizer = load_tokenizer(str(tiny_dir), stage(think=False))
    assert not any(token in tokenizer.get_vocab() for token in THINK_TOKENS)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"


def test_think_tokens_are_added_once_and_survive_a_save(tiny_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_dir), stage(think=True))
    base_size = len(load_tokenizer(str(tiny_dir), stage(think=False)))
    assert len(tokenizer) == base_size + 2
    ids = tokenizer("<think>\n1 + 1 = 2\n</think>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<think>") == ids[0]
    assert tokenizer.convert_tokens_to_ids("</think>") == ids[-1]

    model = load_model(str(tiny_dir), tokenizer, HardwareConfig(name="cpu"))
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    again = load_tokenizer(str(tmp_path), stage(think=True))  # a resume or the next stage: no new tokens
    assert len(again) == len(tokenizer)
    assert again.convert_tokens_to_ids("<think>") == tokenizer.convert_tokens_to_ids("<think>")
    assert load_model(str(tmp_path), again, HardwareConfig(name="cpu")).get_input_embeddings().num_embeddings == len(
        tokenizer
    )


def test_local_directories_resolve_to_themselves(tiny_dir):
    assert resolve_pretrained(str(tiny_dir)) == str(tiny_dir)


def test_a_missing_model_directory_is_named(tmp_path):
    with pytest.raises(TrlmError, match=f"model directory {tmp_path}/nope does not exist"):
        resolve_pretrained(str(tmp_path / "nope"))


def test_a_directory_that_is_not_a_model_is_named_with_a_hint(tiny_dir, tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    with pytest.raises(TrlmError, match=r"not a model directory \(no config.json .*its finished model is .*final"):
        resolve_pretrained(str(tmp_path / "run"))


def test_uncached_hub_model_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(TrlmError) as raised:
        resolve_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert (
        "HuggingFaceTB/SmolLM2-135M-Instruct" in message and "model.path=" in message and "experiment=demo" in message
    )
    assert "\n" not in message


def test_stage_tokenizer_sets_the_stage_system_prompt(tiny_dir):
    tokenizer = stage_tokenizer(load_tokenizer(str(tiny_dir), stage(False)), stage(False))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nSys.<|im_end|>")
