"""Sweep benchmarks on the demo (CPU): what asynchronous trials and pruning buy, measured side by side.

1. Asynchronous vs batch-synchronous trials, n_jobs=2, trials of uneven length (the same six
   enqueued trials, long and short, in both runs): wall time of the whole sweep.
2. Pruning on vs off: the same trial sequence (a seeded random sampler, so pruning cannot change
   what is asked), the best trial each finds and the training steps all trials took.

Run: `make bench-sweep` (about 12 minutes here). Writes docs/bench/sweep.json and prints a table.
Nothing else may use the cores meanwhile: the figures are wall times.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import record  # bench/record.py (this folder is on the path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trlm.records import Summary  # noqa: E402

BASE = ["experiment=demo", "stage=sft", "stage.evaluation.generate=false", "sweep=lr", "stage.recipe.save_steps=1000"]
UNEVEN_STEPS = [150, 15, 15, 150, 15, 15]  # long, short, short, long, short, short


def sweep(out: Path, *overrides: str) -> tuple[float, Path]:
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"paths.output_root={out}", *BASE, *overrides]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"sweep failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.monotonic() - started, out / "demo" / "sweeps" / "lr" / "sft"


def trials(sweep_dir: Path) -> list[dict]:
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    for row in rows:
        summary = Summary.load(sweep_dir / row["number"] / "summary.json")
        row["steps"] = summary.global_step if summary else 0
    return rows


def asynchronous_vs_batches(work: Path) -> dict:
    enqueued = ",".join(f"{{stage.recipe.max_steps:{steps}}}" for steps in UNEVEN_STEPS)
    common = ["hydra.sweeper.n_jobs=2", f"hydra.sweeper.n_trials={len(UNEVEN_STEPS)}", "hydra.sweeper.pruner=null",
              "stage.recipe.max_steps=choice(15,150)", f"hydra.sweeper.enqueue_trials=[{enqueued}]"]  # fmt: skip
    walls = {}
    for mode in ("false", "true"):
        walls[mode], _ = sweep(work / f"async-{mode}", *common, f"hydra.sweeper.asynchronous={mode}")
    return {
        "trials_steps": UNEVEN_STEPS,
        "batch_synchronous_wall_s": round(walls["false"], 1),
        "asynchronous_wall_s": round(walls["true"], 1),
        "asynchronous_over_batch": round(walls["true"] / walls["false"], 3),
    }


def pruning_on_vs_off(work: Path) -> dict:
    common = ["hydra.sweeper.n_trials=12", "hydra.sweeper.sampler={_target_:optuna.samplers.RandomSampler,seed:3}",
              "stage.recipe.max_steps=100", "stage.recipe.learning_rate=tag(log,interval(1e-5,3e-3))",
              "hydra.sweeper.report_every=10"]  # fmt: skip
    runs = {}
    for name, pruner in (("off", ["hydra.sweeper.pruner=null"]), ("on", [])):
        wall, folder = sweep(work / f"pruning-{name}", *common, *pruner)
        rows = trials(folder)
        finished = [r for r in rows if r["state"] == "COMPLETE"]
        best = min(finished, key=lambda r: float(r["value"]))
        runs[name] = {
            "wall_s": round(wall, 1),
            "trial_steps": sum(r["steps"] for r in rows),
            "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "best_trial": int(best["number"]),
            "best_value": float(best["value"]),
            "best_learning_rate": float(best["stage.recipe.learning_rate"]),
        }
    return {
        **{f"pruning_{k}": v for k, v in runs.items()},
        "same_best_trial": runs["on"]["best_trial"] == runs["off"]["best_trial"],
        "trial_steps_on_over_off": round(runs["on"]["trial_steps"] / runs["off"]["trial_steps"], 3),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        figures = {"machine": f"{os.cpu_count()} cores", **asynchronous_vs_batches(work), **pruning_on_vs_off(work)}
    record("sweep", figures)


if __name__ == "__main__":
    main()
