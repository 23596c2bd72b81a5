"""Training-speed benchmark: trlm's SFT path (padding-free) vs the reference recipe (padded), side by side.

Same model, rows, batches and steps; each configuration runs in a fresh process (its peak memory
is its own). Rows are token sequences whose lengths follow a long tail like the report's stage-2
traces (lognormal, median ~300 tokens, capped at the stage's 4096), drawn with a fixed seed.
Effective tokens/s counts the rows' own tokens only; token efficiency is rows' tokens / tokens
computed (padding included). The first step is warm-up and not timed.

Models: the demo's tiny Llama, and the SmolLM2-135M shape (random weights from its config), cut to
2 of its 30 layers (at 8 and at 16 rows a step) and whole (SFT only: its DPO steps would take ~20
minutes). DPO: step time of TRL's DPO as a user runs it (reference log-probs on the fly, padded: the
reference) against trlm's (reference precomputed, batches padding-free), and with only the reference
precomputed (TRL's `precompute_ref_log_probs`).

Run: `make bench-train` (~30 minutes here). Writes docs/bench/train.json and docs/bench/train.md.
Nothing else may use the cores meanwhile: the figures are wall times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from record import record  # bench/record.py (this folder is on the path)
from workload import SMOLLM2_135M, row_lengths

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny_llama (demo)": {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "batch": 16, "steps": 4,
                          "preset": "cpu/tiny_llama"},
    "SmolLM2-135M shape, 2 of 30 layers": {**SMOLLM2_135M, "num_hidden_layers": 2, "batch": 8, "steps": 3},
    # The same at 16 rows a step (SFT only), nearer the report's per-device 32 than 8: how the ratio moves with
    # the batch (a longer longest row to pad to). The padded run at 32 would not fit in 24 GB here.
    "SmolLM2-135M shape, 2 of 30 layers, batch 16, SFT only": {**SMOLLM2_135M, "num_hidden_layers": 2, "batch": 16,
                                                               "steps": 3, "sft_only": True},
    # The whole model, SFT only (its DPO steps would take ~20 minutes here): with 2 layers the 49,152-row
    # LM head is most of the work, with 30 the attention over long rows weighs as on the real model.
    "SmolLM2-135M shape, all 30 layers, SFT only": {**SMOLLM2_135M, "batch": 8, "steps": 3, "sft_only": True,
                                                    "preset": "cpu/smollm2_135m"},
}  # fmt: skip
MAX_LENGTH = 4096

WORKER = r"""
import json, sys, time, dataclasses
import numpy as np, torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer, DPOConfig, DPOTrainer
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/bench"]
from trlm.padding_free import make_padding_free
from workload import row_lengths
spec, mode = json.loads(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
rng = np.random.default_rng(0)
arch = {k: v for k, v in spec.items() if k not in ("batch", "steps", "sft_only", "preset")}
import tempfile
saved = tempfile.mkdtemp()  # DPO builds its reference model from the policy's directory
config = LlamaConfig(max_position_embeddings=4096, **{"tie_word_embeddings": True, **arch})
LlamaForCausalLM(config).save_pretrained(saved)
model = LlamaForCausalLM.from_pretrained(saved, attn_implementation="sdpa")
n_rows = spec["batch"] * (spec["steps"] + 1)
lengths = row_lengths(rng, n_rows)
class Timer(TrainerCallback):
    def __init__(self): self.starts, self.ends = [], []
    def on_step_begin(self, *a, **k): self.starts.append(time.perf_counter())
    def on_step_end(self, *a, **k): self.ends.append(time.perf_counter())
timer = Timer()
from transformers import PreTrainedTokenizerFast
from tokenizers import Tokenizer, models
from tokenizers.pre_tokenizers import WhitespaceSplit
words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(500)}}
vocab = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
vocab.pre_tokenizer = WhitespaceSplit()
tok = PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="<pad>", eos_token="<eos>")
common = dict(output_dir="/tmp/trlm-bench", max_steps=spec["steps"] + 1, per_device_train_batch_size=spec["batch"],
              report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000, seed=0, bf16=False,
              dataloader_drop_last=True, disable_tqdm=True)
if mode in ("padded", "padding_free"):
    rows = Dataset.from_dict({"input_ids": [rng.integers(3, arch["vocab_size"], n).tolist() for n in lengths]})
    args = SFTConfig(max_length=4096, shuffle_dataset=False, **common)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tok, callbacks=[timer])
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    if mode == "padding_free":
        assert make_padding_free(trainer, model, "sdpa")
else:
    half = lengths // 2
    def text(n): return " ".join(f"w{i}" for i in rng.integers(0, 500, max(int(n), 1)))
    rows = Dataset.from_dict({"prompt": [text(n) for n in half], "chosen": [text(n) for n in half],
                              "rejected": [text(n) for n in half]})
    args = DPOConfig(max_length=4096, precompute_ref_log_probs=(mode != "dpo"), **common)
    if mode == "dpo_trlm":  # trlm's path: reference precomputed, batches padding-free
        from trlm.trainers import TrlmDPOTrainer
        trainer = TrlmDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tok, callbacks=[timer],
                                 padding_free=("sdpa", "cpu"))
    else:
        trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tok, callbacks=[timer])
trainer.train()
steps = [e - s for s, e in zip(timer.starts[1:], timer.ends[1:])]
batches = [lengths[i * spec["batch"]:(i + 1) * spec["batch"]] for i in range(1, spec["steps"] + 1)]
real_tokens = sum(int(b.sum()) for b in batches)
computed = real_tokens if mode == "padding_free" else sum(int(b.max()) * len(b) for b in batches)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"step_s": sum(steps) / len(steps), "real_tokens": real_tokens, "computed_tokens": computed,
                  "tokens_per_s": real_tokens / sum(steps), "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024}))
"""


def padded_efficiency(batch: int, rows: int = 32_000) -> float:
    """The padded recipe's token efficiency on this length mix at a per-device batch (counted, not timed)."""
    lengths = row_lengths(np.random.default_rng(1), rows, longest=MAX_LENGTH)
    batches = lengths[: rows // batch * batch].reshape(-1, batch)
    return round(float(batches.sum() / (batches.max(axis=1).sum() * batch)), 3)


def run(spec: dict, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count()), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec), mode, str(ROOT)], capture_output=True,
                            text=True, env=env)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sft_figures(spec: dict) -> dict:
    padded, free = run(spec, "padded"), run(spec, "padding_free")
    return {
        "speedup": round(free["tokens_per_s"] / padded["tokens_per_s"], 2),
        "token_efficiency": round(free["real_tokens"] / free["computed_tokens"], 3),
        "reference_token_efficiency": round(padded["real_tokens"] / padded["computed_tokens"], 3),
        "tokens_per_s": {"reference": round(padded["tokens_per_s"]), "trlm": round(free["tokens_per_s"])},
        "peak_rss_mib": {"reference": round(padded["peak_rss_mib"]), "trlm": round(free["peak_rss_mib"])},
        "batch": spec["batch"],
        "timed_steps": spec["steps"],
    }


def dpo_figures(spec: dict) -> dict:
    dpo, dpo_cached, dpo_trlm = run(spec, "dpo"), run(spec, "dpo_precomputed"), run(spec, "dpo_trlm")
    return {
        "dpo_step_time_ratio": round(dpo_trlm["step_s"] / dpo["step_s"], 3),
        "dpo_step_time_ratio_precomputed_only": round(dpo_cached["step_s"] / dpo["step_s"], 3),
        "dpo_step_s": {key: round(result["step_s"], 3) for key, result in
                       (("reference", dpo), ("precomputed", dpo_cached), ("trlm", dpo_trlm))},
        "dpo_peak_rss_mib": {key: round(result["peak_rss_mib"]) for key, result in
                             (("reference", dpo), ("precomputed", dpo_cached), ("trlm", dpo_trlm))},
    }  # fmt: skip


def main() -> None:
    figures = {"machine": f"{os.cpu_count()} CPU cores, fp32, sdpa", "max_length": MAX_LENGTH, "models": {}}
    for name, spec in MODELS.items():
        print(f"{name} ...", flush=True)
        figures["models"][name] = sft_figures(spec)
        figures["models"][name].update(
            {"dpo_step_time_ratio": None, "dpo_not_measured": "SFT only"} if spec.get("sft_only") else dpo_figures(spec)
        )
    # The report's per-device batch is 32; CPU memory limits the timed runs to 8 or 16 rows a batch.
    figures["padded_token_efficiency_by_batch"] = {batch: padded_efficiency(batch) for batch in (8, 16, 32)}
    # What `trlm plan` estimates time from: effective tokens/s per device, by <hardware>/<model> preset.
    figures["throughput_tokens_per_s"] = {
        spec["preset"]: figures["models"][name]["tokens_per_s"]["trlm"]
        for name, spec in MODELS.items()
        if "preset" in spec
    }
    out = record("train", figures).parent
    lines = ["# Training speed (bench/train_bench.py)", "",
             f"{figures['machine']}, rows up to {MAX_LENGTH} tokens.", "",
             "| model | speedup (tokens/s) | token efficiency | reference efficiency | DPO step (trlm) "
             "| of which: precomputed ref only |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, f in figures["models"].items():
        dpo = (
            "not measured | -"
            if f["dpo_step_time_ratio"] is None
            else (f"{f['dpo_step_time_ratio']}x | {f['dpo_step_time_ratio_precomputed_only']}x")
        )
        lines.append(f"| {name} | {f['speedup']}x | {f['token_efficiency']:.1%} | "
                     f"{f['reference_token_efficiency']:.1%} | {dpo} |")  # fmt: skip
    (out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
