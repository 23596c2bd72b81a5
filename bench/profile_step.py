"""Where one training step of the SmolLM2-135M shape spends its time on CPU: torch's profiler table.

One batch of the bench-train length mix (lognormal, median ~300 tokens, 8 rows), random weights,
fp32, sdpa; padding-free through trlm's attention, or padded as the reference recipe runs it.

    python bench/profile_step.py --layers 30 --batch-index 2             # padding-free
    python bench/profile_step.py --layers 2 --padded                     # the padded recipe
    python bench/profile_step.py --layers 30 --time 3                    # 3 timed steps, no profiler

The padded 30-layer profile needs more than 24 GB (the profiler keeps every tensor's record).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM
from workload import SMOLLM2_135M, row_lengths  # bench/workload.py (this folder is on the path)

from trlm.padding_free import keep_rows_apart


def batch_lengths(index: int, rows: int = 8) -> np.ndarray:
    """The bench-train worker's draw: the same rows in the same batches."""
    lengths = row_lengths(np.random.default_rng(0), rows * (index + 1))
    return lengths[index * rows : (index + 1) * rows]


def inputs(model: LlamaForCausalLM, lengths: np.ndarray, padded: bool) -> dict:
    vocab = model.config.vocab_size
    if padded:
        longest = int(lengths.max())
        ids = torch.randint(3, vocab, (len(lengths), longest))
        mask = (torch.arange(longest)[None] < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    keep_rows_apart(model, "sdpa")
    ids = torch.randint(3, vocab, (1, int(lengths.sum())))
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    longest = int(lengths.max())
    return {"input_ids": ids, "labels": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--batch-index", type=int, default=2, help="which bench-train batch (0 is its warm-up)")
    parser.add_argument("--padded", action="store_true")
    parser.add_argument("--time", type=int, default=0, help="time this many steps instead of profiling one")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers}, max_position_embeddings=4096,
                         attn_implementation="sdpa", use_cache=False)  # fmt: skip
    model = LlamaForCausalLM(config).train()
    lengths = batch_lengths(args.batch_index)
    batch = inputs(model, lengths, args.padded)
    print(f"rows {lengths.tolist()}: {lengths.sum()} tokens, {lengths.max() * len(lengths)} padded", flush=True)

    def step() -> None:
        model(**batch).loss.backward()

    step()  # warm-up
    if args.time:
        for _ in range(args.time):
            start = time.perf_counter()
            step()
            print(f"step {time.perf_counter() - start:.2f} s", flush=True)
        return
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
