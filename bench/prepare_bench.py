"""Benchmark: blend preparation throughput and peak memory at 1x and 10x source size.

    .venv/bin/python bench/prepare_bench.py [--base-scale 10]

Writes the fixture sources (trlm/data/fixtures.py) at `base-scale` and 10x that, prepares a
conversation blend (two smoltalk-style sources) and a preference blend (OLMo-style) from each in
a fresh process, and reports rows/s and peak RSS. The 1x run is the baseline: streaming
preparation should keep peak memory flat (10x / 1x <= 1.2) while the sources grow tenfold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREPARE = """
import json, sys, time
from pathlib import Path
from omegaconf import OmegaConf
from trlm.config import DataConfig
from trlm.data.prepare import prepare_blend
def peak_rss_mib():
    # VmHWM belongs to this program's own address space; ru_maxrss would also count the parent's
    # memory at fork time (it survives exec on Linux).
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmHWM"].split()[0]) / 1024
cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), json.loads(sys.argv[1]))
started = time.perf_counter()
meta = prepare_blend(cfg, Path(sys.argv[2]), rebuild=True).metadata
print(json.dumps({"seconds": time.perf_counter() - started, "read": meta["total_read"],
                  "kept": meta["total_entries"], "format": meta["format"],
                  "peak_rss_mib": peak_rss_mib()}))
"""


def blends(sources: Path) -> dict[str, dict]:
    return {
        "conversation": {
            "name": "bench-sft",
            "kind": "conversation",
            "dedup": True,
            "sources": [
                {"name": str(sources / "smoltalk_no_think.jsonl")},
                {"name": str(sources / "smoltalk_think.parquet"), "drop_columns": ["chat_template_kwargs"]},
            ],
        },
        "preference": {
            "name": "bench-dpo",
            "kind": "preference",
            "dedup": True,
            "sources": [
                {
                    "name": str(sources / "olmo_preference.jsonl"),
                    "drop_columns": ["prompt", "category", "prompt_id"],
                    "rename_columns": {"dataset": "source"},
                }
            ],
        },
    }


def measure(blend: dict, out: Path) -> dict:
    """Prepares `blend` in a fresh process, which reports its own time and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", PREPARE, json.dumps(blend), str(out)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["read"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-scale", type=int, default=10, help="fixture scale of the 1x run (2,000 rows x scale)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trlm.data.fixtures import write_fixture_sources

    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, dict[str, dict]] = {}
        for factor in (1, 10):
            sources = Path(tmp) / f"x{factor}"
            started = time.perf_counter()
            write_fixture_sources(sources, scale=args.base_scale * factor)
            print(f"fixtures x{factor}: written in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            for kind, blend in blends(sources).items():
                results.setdefault(kind, {})[f"x{factor}"] = measure(blend, Path(tmp) / "blends")
                print(f"{kind} x{factor}: {results[kind][f'x{factor}']}", file=sys.stderr)

    print(f"\nblend preparation, fixture base scale {args.base_scale} (1x = {2000 * args.base_scale:,} rows/source)")
    print(f"{'blend':<13} {'size':<4} {'rows read':>10} {'kept':>9} {'format':>8} {'rows/s':>9} {'peak RSS MiB':>13}")
    for kind, runs in results.items():
        for size, r in runs.items():
            print(f"{kind:<13} {size:<4} {r['read']:>10,} {r['kept']:>9,} {r['format']:>8} {r['rows_per_s']:>9,.0f} "
                  f"{r['peak_rss_mib']:>13,.0f}")  # fmt: skip
        ratio = runs["x10"]["peak_rss_mib"] / runs["x1"]["peak_rss_mib"]
        print(f"{kind:<13} peak memory 10x / 1x = {ratio:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
