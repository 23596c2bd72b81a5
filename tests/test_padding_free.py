"""Padding-free SFT is the padded recipe's math: per-row logits, loss and one optimizer step agree."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from trlm import padding_free
from trlm.padding_free import (
    DOCUMENT_ATTENTION,
    attention_for_padding_free,
    document_attention,
    keep_rows_apart,
    make_padding_free,
    varlen_rows,
    varlen_works,
)

LENGTHS = [1, 7, 23, 4]  # very different lengths, and a row of one token


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    return model


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("with_boundaries", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_each_row_of_a_concatenated_batch_sees_only_itself(base, with_boundaries):
    model = tiny_llama(base)
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 97, (n,), generator=generator) for n in LENGTHS]
    with torch.no_grad():
        alone = [model(input_ids=row[None]).logits[0] for row in rows]
        model.set_attn_implementation(DOCUMENT_ATTENTION)
        model.config.use_cache = False
        position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
        cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
        extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu} if with_boundaries else {}
        packed = model(input_ids=torch.cat(rows)[None], position_ids=position_ids, **extra).logits[0]
    for row_logits, (start, end) in zip(alone, itertools.pairwise(cu), strict=True):
        torch.testing.assert_close(packed[start:end], row_logits, atol=1e-5, rtol=1e-5)


def test_a_padded_batch_still_gets_the_usual_masked_attention():
    model = tiny_llama("sdpa")
    rows = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        expected = model(input_ids=rows, attention_mask=mask).logits
        model.set_attn_implementation(DOCUMENT_ATTENTION)
        got = model(input_ids=rows, attention_mask=mask).logits
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1, :2], expected[1, :2])


def one_step(padding_free: bool, tmp_path, attn: str = "sdpa", packing: bool = False, compile_backend: str = ""):
    from trlm.demo.tokenizer import train_demo_tokenizer

    tokenizer = train_demo_tokenizer(vocab_size=97)
    model = tiny_llama(attn).train()
    model.resize_token_embeddings(len(tokenizer))
    texts = ["1 + 1 = 2", "12 + 30 = 42 and then some more words to make it long", "7", "3 + 4 = 7 + 0"]
    rows = Dataset.from_dict({"text": texts})
    args = SFTConfig(output_dir=str(tmp_path / str(padding_free)), max_steps=1, per_device_train_batch_size=4,
                     learning_rate=1e-2, report_to=[], max_length=12, seed=0, use_cpu=True, save_strategy="no",
                     logging_steps=1, optim="sgd", packing=packing, torch_compile=bool(compile_backend),
                     torch_compile_backend=compile_backend or None)  # fmt: skip
    # SGD: Adam's first step is about lr * sign(grad), which would amplify rounding into the weights
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    model.config.use_cache = False  # a cache would join concatenated rows (transformers' packed-mask path too)
    if padding_free and packing:
        assert keep_rows_apart(model, attn)
    elif padding_free:
        assert make_padding_free(trainer, model, attn)
    loss = trainer.train().training_loss
    return loss, {name: p.detach().clone() for name, p in model.named_parameters()}


# Padding-free attention runs sdpa's kernel per row: against padded sdpa it agrees to float32 rounding;
# against padded eager, as closely as eager and sdpa agree with each other (measured: 2e-5 relative).
@pytest.mark.parametrize(("attn", "rel"), [("sdpa", 1e-6), ("eager", 1e-4)])
def test_one_optimizer_step_padding_free_equals_the_padded_recipe(tmp_path, attn, rel):
    padded_loss, padded_weights = one_step(False, tmp_path, attn)
    free_loss, free_weights = one_step(True, tmp_path, attn)
    assert free_loss == pytest.approx(padded_loss, rel=rel)
    for name, weight in padded_weights.items():
        torch.testing.assert_close(free_weights[name], weight, atol=10 * rel, rtol=10 * rel, msg=name)


def test_torch_compile_keeps_the_rows_apart(tmp_path):
    """hardware.torch_compile through the Trainer (accelerate's dynamo plugin): the compiled padding-free step
    is the padded recipe's. aot_eager traces as inductor does (graphs, breaks at the per-row loop, autograd)
    without its C++ build, minutes on a 2-core machine with a cold cache."""
    padded_loss, padded_weights = one_step(False, tmp_path / "padded")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_loss, compiled_weights = one_step(True, tmp_path / "compiled", compile_backend="aot_eager")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the step did run compiled
    assert compiled_loss == pytest.approx(padded_loss, rel=1e-6)
    for name, weight in padded_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, atol=1e-5, rtol=1e-5, msg=name)


def test_packed_rows_train_as_the_padded_recipe_when_packing_changes_no_batch(tmp_path):
    """bfd packing is a change to the recipe (more rows a step), but here every row fits one step: the
    packed step through trlm_documents must then be the padded recipe's step."""
    padded_loss, padded_weights = one_step(False, tmp_path / "padded")
    packed_loss, packed_weights = one_step(True, tmp_path / "packed", packing=True)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-6)
    for name, weight in padded_weights.items():
        torch.testing.assert_close(packed_weights[name], weight, atol=1e-5, rtol=1e-5, msg=name)


def test_an_attention_that_cannot_keep_rows_apart_trains_padded_with_one_warning(tmp_path, caplog):
    model = tiny_llama("sdpa")

    class Trainer:
        data_collator = object()

    trainer = Trainer()
    with caplog.at_level(logging.WARNING):
        assert not make_padding_free(trainer, model, "flex_attention")
    assert trainer.data_collator is Trainer.data_collator
    assert caplog.text.count("training padded") == 1


def test_a_gpu_without_torchs_varlen_kernel_trains_padded_rather_than_row_by_row(monkeypatch):
    assert attention_for_padding_free("sdpa", "cpu") == DOCUMENT_ATTENTION  # the per-row loop: fast on CPU
    assert attention_for_padding_free("sdpa", "cuda") == DOCUMENT_ATTENTION  # torch 2.13 ships varlen
    assert attention_for_padding_free("flash_attention_2", "cuda") == "flash_attention_2"
    monkeypatch.setattr(padding_free, "varlen_attn", None)  # an older torch
    assert attention_for_padding_free("sdpa", "cuda") is None  # the loop ran at 0.16-0.36x padded on an H100
    assert attention_for_padding_free("eager", "cpu") == DOCUMENT_ATTENTION


def test_torchs_varlen_kernel_is_tried_once_and_a_device_without_it_says_so(caplog):
    with caplog.at_level(logging.WARNING):  # CPU builds of torch have no flash kernel
        assert not varlen_works(torch.device("cpu"), torch.bfloat16)
        assert not varlen_works(torch.device("cpu"), torch.bfloat16)
    assert caplog.text.count("rows kept apart one by one") == 1


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=None, window_size=None,
                     enable_gqa=False):  # fmt: skip
    """torch's varlen_attn contract, on CPU: (total, heads, dim) rows attended one by one."""
    assert is_causal is True or window_size == (-1, 0)
    assert max_q == max(torch.diff(cu_q).tolist()) and cu_q.dtype == torch.int32
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    assert k.shape[1] == q.shape[1]  # without enable_gqa, trlm repeats the key/value heads itself
    out = [torch.nn.functional.scaled_dot_product_attention(
        q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), is_causal=True, scale=scale)
        for s, e in itertools.pairwise(cu_q.tolist())]  # fmt: skip
    return torch.cat(out, dim=1).transpose(0, 1)


@pytest.mark.parametrize("signature", ["window_size+enable_gqa", "is_causal"], ids=["window_size", "is_causal"])
@pytest.mark.parametrize("with_boundaries", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_the_varlen_call_gets_rows_heads_and_boundaries_right(monkeypatch, signature, with_boundaries):
    """The kernel itself runs on GPUs only (bench/gpu_check.py checks it there); its plumbing here."""
    monkeypatch.setattr(padding_free, "varlen_attn", reference_varlen)
    names = {"window_size+enable_gqa": ["window_size", "enable_gqa"], "is_causal": ["is_causal"]}[signature]
    monkeypatch.setattr(padding_free, "_VARLEN_ARGS", {name: None for name in names})
    generator = torch.Generator().manual_seed(2)
    heads, kv_heads, total = 4, 2, sum(LENGTHS)
    query = torch.randn(1, heads, total, 8, generator=generator)
    key, value = (torch.randn(1, kv_heads, total, 8, generator=generator) for _ in range(2))
    spans = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    kwargs = {"cu_seq_lens_q": torch.tensor(spans, dtype=torch.int32), "max_length_q": max(LENGTHS)}
    got = varlen_rows(query, key, value, spans, 0.3, heads // kv_heads, torch.float32,
                      kwargs if with_boundaries else {})  # fmt: skip

    class Attention(torch.nn.Module):
        num_key_value_groups = heads // kv_heads

    expected, _ = document_attention(Attention().eval(), query, key, value, None, scaling=0.3, **kwargs)
    torch.testing.assert_close(got, expected)


def one_dpo_step(padding_free: bool, tmp_path, precompute: bool):
    from trl import DPOConfig

    from trlm.demo.tokenizer import train_demo_tokenizer
    from trlm.trainers import TrlmDPOTrainer

    tokenizer = train_demo_tokenizer(vocab_size=97)
    model = tiny_llama("sdpa")
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "start")  # the reference model is loaded from here
    model = LlamaForCausalLM.from_pretrained(tmp_path / "start", attn_implementation="sdpa").train()
    prompts = ["1 + 1 =", "What is 12 + 30 and then some more words to make it long?", "7", "3 + 4"]
    rows = Dataset.from_dict({"prompt": prompts, "chosen": [" 2", " 42, since 12 + 30 = 42.", " 7", " 7 then"],
                              "rejected": [" 3 or so", " 41", " 8 and more words here", " 6"]})  # fmt: skip
    args = DPOConfig(output_dir=str(tmp_path / str(padding_free)), max_steps=1, per_device_train_batch_size=4,
                     learning_rate=1e-2, report_to=[], seed=0, use_cpu=True, save_strategy="no", logging_steps=1,
                     optim="sgd", loss_type=["apo_zero"], precompute_ref_log_probs=precompute)  # fmt: skip
    seen = []  # what the transformer itself is given: (rows, tokens)
    model.model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                          with_kwargs=True)  # fmt: skip
    trainer = TrlmDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                             padding_free=("sdpa", "cpu") if padding_free else None)  # fmt: skip
    assert getattr(model.forward, "trlm_padding_free", False) == padding_free
    logged = trainer.train() and trainer.state.log_history[0]
    return seen, logged, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("precompute", [False, True], ids=["reference-model", "precomputed-reference"])
def test_one_dpo_step_padding_free_equals_the_padded_recipe(tmp_path, precompute):
    padded_seen, padded, padded_weights = one_dpo_step(False, tmp_path / "padded", precompute)
    free_seen, free, free_weights = one_dpo_step(True, tmp_path / "free", precompute)
    assert padded_seen[-1][0] == 8 and free_seen[-1][0] == 1  # 4 pairs padded; one concatenated row
    assert free_seen[-1][1] < padded_seen[-1][0] * padded_seen[-1][1]  # fewer tokens computed
    # sums over rows' tokens from other kernels (sdpa per row vs masked sdpa): float32 rounding, 1e-5 relative
    for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "entropy"):
        assert free[key] == pytest.approx(padded[key], rel=5e-5, abs=1e-5), key
    if precompute:  # the reference pass went padding-free too: at the first step policy == reference exactly
        assert free["rewards/chosen"] == pytest.approx(0.0, abs=1e-6) == free["rewards/rejected"]
    for name, weight in padded_weights.items():
        torch.testing.assert_close(free_weights[name], weight, atol=1e-5, rtol=1e-5, msg=name)
