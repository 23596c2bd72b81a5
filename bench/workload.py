"""What the training benchmarks run: the SmolLM2-135M shape and a row-length mix like the report's
stage-2 traces. One place, so that bench-train, profile_step and gpu_check time the same thing."""

from __future__ import annotations

import numpy as np

# SmolLM2-135M-Instruct's architecture (its config.json), for a copy with random weights
SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}  # fmt: skip


def row_lengths(rng: np.random.Generator, rows: int, median: int = 300, shortest: int = 16, longest: int = 4096):
    """Long-tailed row lengths, as the report's reasoning traces: lognormal around `median`, clipped."""
    return np.clip(rng.lognormal(np.log(median), 1.0, rows).astype(int), shortest, longest)
