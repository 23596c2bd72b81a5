"""bench/gpu_check.py is ready for the next GPU: its dry run on CPU measures every case and writes them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trlm.paths import PROJECT_ROOT


@pytest.mark.slow
def test_the_gpu_check_dry_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    script = PROJECT_ROOT / "bench" / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["card"] == "cpu (dry run)"
    for length in (128, 256):
        padded, free = figures[f"padded@{length}"], figures[f"padding_free@{length}"]
        assert free["token_efficiency"] == 1.0 > padded["token_efficiency"]  # padding-free computes no padding
        assert padded["effective_tokens_per_s"] > 0 and free["effective_tokens_per_s"] > 0
        assert figures[f"speedup:padding_free@{length}"] > 0
    apart = figures["rows_kept_apart"]  # each row's logits in the concatenated batch vs the row alone
    assert apart["per_row"] < 1e-4 * apart["logit_scale"] < apart["leaking_sdpa"]  # and the check can fail
    one = figures["padding_free+foreach_adamw@256"]  # the optimisation series runs at the longer length
    assert one["effective_tokens_per_s"] > 0 and "vs_padding_free:padding_free+foreach_adamw" in figures
    together = figures["concurrent@2@256"]  # 2 trials at once on one device: aggregate throughput, each one's own
    assert len(together["tokens_per_s_each"]) == 2 and all(t > 0 for t in together["tokens_per_s_each"])
    assert together["aggregate_tokens_per_s"] == sum(together["tokens_per_s_each"])
    assert figures["vs_padding_free:concurrent@2"] > 0
