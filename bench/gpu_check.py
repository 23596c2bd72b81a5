"""GPU check (<= 5 minutes): tokens/s, MFU and peak memory of the SmolLM2-135M shape, padded vs padding-free.

    .venv/bin/python bench/gpu_check.py            # on a GPU machine: writes docs/bench/gpu-<card>.json
    .venv/bin/python bench/gpu_check.py --dry-run  # anywhere: a 1-layer shape on CPU, fp32, short rows

Random weights from SmolLM2-135M's config, bf16 autocast, AdamW (fused on GPU), rows of long-tailed
lengths (lognormal, median ~300 tokens) up to 2048 and up to 4096 tokens, a batch of 16 rows. Cases:
- `padded`: the reference (sdpa, padding to the longest row);
- `padding_free`: rows concatenated and kept apart by trlm's attention (on a GPU torch's own flash
  varlen kernel, one call per layer);
- `padding_free_per_row`: the same, rows kept apart one sdpa call per row (what a GPU whose torch
  lacks the varlen kernel gets, and the CPU path);
- `+liger`: the same with Liger's kernels (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE), when
  liger-kernel is importable (each in a process of its own); `+compile`: torch.compile, with `--compile`.
At the report's stage-2 batch (32 rows, up to 4096 tokens), what might make one trial faster, each alone
and together: `+foreach_adamw` (the unfused optimizer, to show what fused AdamW buys), `+regional_compile`
(torch.compile of one decoder layer, its code reused by every layer: compiles once, unlike the whole
model), `+flce` (Liger's fused linear cross-entropy alone). And `concurrent@k`: k processes training at
once on one card, each held to 1/k of its memory (as `hardware.trials_per_gpu=k`): aggregate tokens/s
and each one's peak memory, k = 1, 2, 4, 8. Timed steps come after warm-up steps (excluded), enough of
them for a steady state.
Effective tokens/s counts the rows' own tokens; MFU = 6 x parameters x effective tokens/s / the card's
peak dense bf16 FLOP/s (attention FLOPs left out, so MFU reads low for long rows).
Before timing, a correctness check: each row's logits from the concatenated batch against the row
run alone, for every isolating attention and for a leaking one (plain causal sdpa over the
concatenation) that shows the check can fail.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import importlib.util
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workload import SMOLLM2_135M as SMOLLM2  # noqa: E402  (bench/workload.py: this folder is on the path)
from workload import row_lengths  # noqa: E402

from trlm import padding_free  # noqa: E402  (registers trlm's per-row attention)

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "MI300X": 1307.0, "A100": 312.0}  # dense, vendor figures
TIME_BUDGET_S = 280  # cases still to run when this is spent are skipped (and said so): the check stays <= 5 min


def batches(max_length: int, batch: int, steps: int, vocab: int, seed: int = 0) -> list[list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    median = min(300, max_length // 8)  # the report's long tail; shorter for the dry run's short rows
    lengths = row_lengths(rng, batch * steps, median, shortest=4, longest=max_length)
    rows = [torch.from_numpy(rng.integers(3, vocab, n)) for n in lengths]
    return [rows[i * batch : (i + 1) * batch] for i in range(steps)]


def padded_inputs(rows: list[torch.Tensor], device: str) -> dict:
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def packed_inputs(rows: list[torch.Tensor], device: str) -> dict:
    ids = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
    labels = ids.clone()
    labels[positions == 0] = -100
    cu = torch.tensor([0, *np.cumsum([len(r) for r in rows])], dtype=torch.int32, device=device)
    longest = int(max(len(r) for r in rows))
    return {"input_ids": ids.to(device), "position_ids": positions.to(device), "labels": labels.to(device),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}  # fmt: skip


def per_row_only(enabled: bool) -> None:
    """Turns torch's varlen kernel off (one sdpa call per row) or back to what this torch can do."""
    if enabled:
        padding_free.varlen_works = lambda device, dtype: False  # type: ignore[assignment]
    else:
        padding_free.varlen_works = VARLEN_WORKS


VARLEN_WORKS = padding_free.varlen_works


def build_model(shape: dict, attention: str, device: str, flags: frozenset[str] = frozenset()):
    from transformers import LlamaConfig, LlamaForCausalLM

    if flags & {"liger", "flce"}:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        only_flce = {"rope": False, "rms_norm": False, "swiglu": False} if "flce" in flags else {}
        apply_liger_kernel_to_llama(**only_flce)  # patches the Llama classes: build the model after it
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=4096, use_cache=False, **shape)).to(device)
    model.set_attn_implementation(attention)
    if "regional_compile" in flags:  # every layer runs the same code: compiled once, reused (torch's recipe)
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    return torch.compile(model, dynamic=True) if "compile" in flags else model


def case(mode: str, shape, max_length, batch, steps, device, dtype, barrier=None, memory_share: int = 1) -> dict:
    padded = mode.startswith("padded")
    flags = frozenset(mode.split("+")[1:])
    per_row_only("per_row" in mode)
    if memory_share > 1 and device == "cuda":  # as a trial with hardware.trials_per_gpu = memory_share
        torch.cuda.set_per_process_memory_fraction(1 / memory_share)
    if barrier is not None and device == "cpu":
        torch.set_num_threads(1)  # the dry run's processes share this machine's cores
    model = build_model(shape, "sdpa" if padded else padding_free.DOCUMENT_ATTENTION, device, flags)
    parameters = sum(p.numel() for p in model.parameters())
    fused = device == "cuda" and "foreach_adamw" not in flags
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=None if fused else True)
    warmup = 0 if device == "cpu" else (5 if flags & {"compile", "regional_compile"} else 3)
    work = batches(max_length, batch, steps + warmup, shape["vocab_size"])
    elapsed = 0.0
    for step, rows in enumerate(work):
        if step == warmup and barrier is not None:
            barrier.wait()  # the k processes time the same stretch, side by side
        if step == warmup and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        inputs = (padded_inputs if padded else packed_inputs)(rows, device)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            elapsed += time.perf_counter() - started
    timed = work[warmup:]
    real = sum(len(r) for rows in timed for r in rows)
    computed = sum(max(len(r) for r in rows) * len(rows) for rows in timed) if padded else real
    return {
        "effective_tokens_per_s": round(real / elapsed),
        "step_ms": round(1000 * elapsed / len(timed), 1),
        "token_efficiency": round(real / computed, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "parameters": parameters,
    }


def concurrent_trials(k: int, shape, max_length, batch, steps, device, dtype) -> dict:
    """k processes training at once on one card, each held to 1/k of its memory: aggregate tokens/s."""
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager, concurrent.futures.ProcessPoolExecutor(k, mp_context=spawn) as pool:
        barrier = manager.Barrier(k)
        runs = [pool.submit(case, "padding_free", shape, max_length, batch, steps, device, dtype, barrier, k)
                for _ in range(k)]  # fmt: skip
        figures = [run.result() for run in runs]
    return {
        "aggregate_tokens_per_s": sum(f["effective_tokens_per_s"] for f in figures),
        "tokens_per_s_each": [f["effective_tokens_per_s"] for f in figures],
        "peak_memory_gib_each": [f["peak_memory_gib"] for f in figures],
        "parameters": figures[0]["parameters"],
    }


@torch.no_grad()
def rows_kept_apart(shape: dict, device: str, dtype) -> dict:
    """Max |logit difference| between each row in a concatenated batch and the row alone, per attention."""
    shape = {**shape, "num_hidden_layers": 2}
    rows = [torch.arange(3, 3 + n) % shape["vocab_size"] for n in (1, 7, 300, 40, 1000)]
    report = {}
    for name, attention, per_row in (("varlen", padding_free.DOCUMENT_ATTENTION, False),
                                     ("varlen_position_ids_only", padding_free.DOCUMENT_ATTENTION, False),
                                     ("per_row", padding_free.DOCUMENT_ATTENTION, True),
                                     ("leaking_sdpa", "sdpa", False)):  # fmt: skip
        if name.startswith("varlen") and not (device == "cuda" and VARLEN_WORKS(torch.device(device), dtype)):
            continue
        per_row_only(per_row)
        model = build_model(shape, attention, device).eval()
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            inputs = packed_inputs(rows, device)
            if name == "varlen_position_ids_only":  # boundaries found from where the positions restart
                inputs = {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"]}
            if attention == "sdpa":  # a 2D mask beside position ids: causal over the whole concatenation
                inputs = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
            packed = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[0].float()
            model.set_attn_implementation("sdpa")
            alone = torch.cat([model(input_ids=r[None].to(device)).logits[0].float() for r in rows])
        report[name] = round(float((packed - alone).abs().max()), 4)
    report["logit_scale"] = round(float(alone.abs().max()), 2)
    per_row_only(False)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="a 1-layer shape on CPU, fp32, short rows, one step")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (the slowest case, run last)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps a case (after warm-up steps, excluded)")
    parser.add_argument("--batch", type=int, default=32, help="rows a step (32: the report's stage-2 batch)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="processes at once on one card (trials_per_gpu)")
    parser.add_argument("--budget", type=float, default=TIME_BUDGET_S, help="seconds after which cases are skipped")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write (default docs/bench/gpu-<card>.json)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --dry-run to check the script on CPU")
    began = time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    card = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    shape = {**SMOLLM2, "num_hidden_layers": 1, "vocab_size": 1024} if args.dry_run else SMOLLM2
    lengths = (128, 256) if args.dry_run else (2048, 4096)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    batch, steps = (2, 1) if args.dry_run else (args.batch, args.steps)
    ks = [2] if args.dry_run else [int(k) for k in args.concurrency.split(",")]
    peak = next((tflops for name, tflops in PEAK_BF16_TFLOPS.items() if name in card.upper()), None)
    import transformers

    results = {"card": card, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "timed_steps": steps,
               "torch": torch.__version__, "transformers": transformers.__version__}  # fmt: skip
    results["rows_kept_apart"] = rows_kept_apart(shape, device, dtype)
    print(f"rows kept apart (max |logit diff| vs the row alone): {results['rows_kept_apart']}", flush=True)
    modes = ["padded", "padding_free", "padding_free_per_row"]
    cases = [(mode, length) for length in lengths for mode in modes]
    if args.compile:
        modes += ["padded+compile", "padding_free+compile"]
        cases += [("padded+compile", lengths[0]), ("padding_free+compile", lengths[0])]
    liger = importlib.util.find_spec("liger_kernel") is not None and not args.dry_run
    if liger:
        modes += ["padded+liger", "padding_free+liger"]
        cases += [(mode, length) for length in lengths for mode in modes[-2:]]
    # one trial at the stage-2 shape: each change alone, then together (compile on CPU: only with --compile)
    series = ["padding_free+foreach_adamw"]
    series += ["padding_free+regional_compile"] if args.compile or not args.dry_run else []
    series += ["padding_free+flce"] if liger else []
    series += ["padding_free+regional_compile+flce"] if liger and not args.dry_run else []
    modes += series
    cases += [(mode, lengths[-1]) for mode in series]
    cases += [(f"concurrent@{k}", lengths[-1]) for k in ks]
    slug = "".join(c if c.isalnum() else "-" for c in card.lower()).strip("-")
    out = args.out or ROOT / "docs" / "bench" / f"gpu-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:  # untimed: the first case would otherwise pay the card's lazy start-up
        case("padded", shape, lengths[0], batch, 1, device, dtype)
    for mode, max_length in cases:
        key = f"{mode}@{max_length}"
        if time.perf_counter() - began > args.budget:
            results[key] = {"skipped": f"the check's {args.budget} s budget was spent"}
            continue
        gc.collect()  # the last case's model and optimizer: gone, and their cached memory back to the card
        if device == "cuda":
            torch.cuda.empty_cache()
        try:
            if mode.startswith("concurrent@"):
                figures = concurrent_trials(int(mode.partition("@")[2]), shape, max_length, batch, steps, device, dtype)
                figures["effective_tokens_per_s"] = figures["aggregate_tokens_per_s"]
            elif "+liger" in mode or "+flce" in mode:  # liger patches the Llama classes for good: its own process
                spawn = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as child:
                    figures = child.submit(case, mode, shape, max_length, batch, steps, device, dtype).result()
            else:
                figures = case(mode, shape, max_length, batch, steps, device, dtype)
        except Exception as error:  # one case failing (a kernel this card lacks) must not lose the others
            results[key] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            print(f"{key:>28}: {results[key]}", flush=True)
            continue
        flops = 6 * figures["parameters"] * figures["effective_tokens_per_s"]
        figures["mfu"] = round(flops / (peak * 1e12), 4) if peak and not args.dry_run else None
        results[key] = figures
        print(f"{key:>28}: {figures}", flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")  # as it goes: a check cut short keeps its figures
    for length in lengths:
        base = results[f"padded@{length}"].get("effective_tokens_per_s")
        for mode in modes[1:]:
            figures = results.get(f"{mode}@{length}", {})
            if base and "effective_tokens_per_s" in figures:
                results[f"speedup:{mode}@{length}"] = round(figures["effective_tokens_per_s"] / base, 2)
    one = results.get(f"padding_free@{lengths[-1]}", {}).get("effective_tokens_per_s")
    for mode in [*series, *(f"concurrent@{k}" for k in ks)]:  # against one padding-free trial, today's
        figures = results.get(f"{mode}@{lengths[-1]}", {})
        if one and "effective_tokens_per_s" in figures:
            results[f"vs_padding_free:{mode}"] = round(figures["effective_tokens_per_s"] / one, 2)
    results["wall_s"] = round(time.perf_counter() - began)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k.startswith("speedup")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
