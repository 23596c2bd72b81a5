"""GPU check (<= 5 minutes): tokens/s, MFU and peak memory of the SmolLM2-135M shape, padded vs padding-free.

    .venv/bin/python bench/gpu_check.py            # on a GPU machine: writes docs/bench/gpu-<card>.json
    .venv/bin/python bench/gpu_check.py --dry-run  # anywhere: a 1-layer shape on CPU, fp32, short rows

Random weights from SmolLM2-135M's config, bf16 autocast, AdamW (fused on GPU), rows of long-tailed
lengths (lognormal, median ~300 tokens) up to 2048 and up to 4096 tokens, a batch of 16 rows: the
padded reference (padding to the longest row) against padding-free (rows concatenated, kept apart
by flash-attention varlen where installed, else trlm's per-row sdpa). Effective tokens/s counts
the rows' own tokens; MFU = 6 x parameters x effective tokens/s / the card's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trlm.padding_free import DOCUMENT_ATTENTION  # noqa: E402  (registers trlm's per-row attention)

SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}  # fmt: skip
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "MI300X": 1307.0, "A100": 312.0}  # dense, vendor figures


def batches(max_length: int, batch: int, steps: int, vocab: int, seed: int = 0) -> list[list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    median = min(300, max_length // 8)  # the report's long tail; shorter for the dry run's short rows
    lengths = np.clip(rng.lognormal(np.log(median), 1.0, batch * steps).astype(int), 4, max_length)
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


def measure(shape: dict, mode: str, max_length: int, batch: int, steps: int, device: str, dtype) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=4096, use_cache=False, **shape)).to(device)
    flash = device == "cuda" and __import__("importlib").util.find_spec("flash_attn") is not None
    model.set_attn_implementation(
        "sdpa" if mode == "padded" else ("flash_attention_2" if flash else DOCUMENT_ATTENTION)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    work = batches(max_length, batch, steps + 1, shape["vocab_size"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elapsed = 0.0
    for step, rows in enumerate(work):
        inputs = (padded_inputs if mode == "padded" else packed_inputs)(rows, device)
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
        if step:  # the first step warms up
            elapsed += time.perf_counter() - started
    real = sum(len(r) for rows in work[1:] for r in rows)
    computed = real if mode != "padded" else sum(max(len(r) for r in rows) * len(rows) for rows in work[1:])
    return {
        "effective_tokens_per_s": round(real / elapsed),
        "token_efficiency": round(real / computed, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "parameters": model.num_parameters(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="a 1-layer shape on CPU, fp32, short rows, one step")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write (default docs/bench/gpu-<card>.json)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --dry-run to check the script on CPU")
    device = "cpu" if args.dry_run else "cuda"
    card = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    shape = {**SMOLLM2, "num_hidden_layers": 1, "vocab_size": 1024} if args.dry_run else SMOLLM2
    lengths = (128, 256) if args.dry_run else (2048, 4096)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    batch, steps = (2, 1) if args.dry_run else (16, 5)
    peak = next((tflops for name, tflops in PEAK_BF16_TFLOPS.items() if name in card.upper()), None)
    results = {"card": card, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "timed_steps": steps}
    for max_length in lengths:
        for mode in ("padded", "padding_free"):
            figures = measure(shape, mode, max_length, batch, steps, device, dtype)
            flops = 6 * figures["parameters"] * figures["effective_tokens_per_s"]
            figures["mfu"] = round(flops / (peak * 1e12), 4) if peak and not args.dry_run else None
            results[f"{mode}@{max_length}"] = figures
            print(f"{mode:>12} @ {max_length}: {figures}", flush=True)
        results[f"speedup@{max_length}"] = round(
            results[f"padding_free@{max_length}"]["effective_tokens_per_s"]
            / results[f"padded@{max_length}"]["effective_tokens_per_s"], 2)  # fmt: skip
    slug = "".join(c if c.isalnum() else "-" for c in card.lower()).strip("-")
    out = args.out or ROOT / "docs" / "bench" / f"gpu-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
