"""Benchmarks through lm-evaluation-harness: `trlm eval DIR tasks=...` and a stage's optional last step.

    trlm eval outputs/demo/dpo tasks=trlm_demo
    trlm eval outputs/run/dpo tasks=gsm8k,bbh,arc_challenge,boolq,piqa,ifeval,mmlu   (the reference's set)
    python train.py ... stage.evaluation.lm_eval.tasks=[trlm_demo]                 (after training)

As the reference README runs it: the chat template applied, few-shot examples as multi-turn
conversations, each task's default number of shots. trlm's own task `trlm_demo`
(trlm/lm_eval_tasks) needs no network; every other task reads its dataset from the Hugging Face
Hub, and where the Hub is out of reach trlm says so in one line. Results land in `<run>/lm_eval/`
(results.json, the samples of each task) and, flattened as `lm_eval/<task>/<metric>`, in the
stage's metrics — so a sweep can optimise one (`stage.objective.metric=lm_eval/trlm_demo/answer_accuracy`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

from trlm.errors import Problem, Problems, TrlmError
from trlm.fsutil import atomic_write_text
from trlm.hub import hub_reachable
from trlm.paths import project_path
from trlm.records import Summary
from trlm.run_dir import SUMMARY

log = logging.getLogger(__name__)
LOCAL_TASKS = Path(__file__).parent / "lm_eval_tasks"
LOCAL_TASK_NAMES = tuple(p.stem for p in LOCAL_TASKS.glob("*/*.yaml"))
REFERENCE_TASKS = ("gsm8k", "bbh", "arc_challenge", "boolq", "piqa", "ifeval", "mmlu")
RESULTS_DIR = "lm_eval"
USAGE = "usage: trlm eval <run dir | model dir> tasks=TASK[,TASK...] [limit=N] [batch_size=N] [device=cpu|cuda]"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def model_dir_of(path: Path) -> tuple[Path, Path]:
    """(the model directory, where results go) for a run directory or a model directory."""
    if not path.is_dir():
        raise TrlmError(f"{path} does not exist (or is not a folder): give a run directory or a model directory")
    summary = Summary.load(path / SUMMARY)
    recorded = Path(summary.final_model) if summary else None  # a run directory moved since: its own final/
    model = next((p for p in (recorded, path / "final") if p is not None and p.is_dir()), path)
    if not (model / "config.json").exists() or not any((model / name).exists() for name in WEIGHTS):
        raise TrlmError(f"{model} is not a complete model directory (config.json and weights): a run still "
                        f"training or killed while saving? Finish or resume it, or give a complete one")  # fmt: skip
    return model, path


@functools.cache
def task_manager():
    """lm-eval's index of tasks, trlm's own included (built once: it reads thousands of task files)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS))


def unknown_tasks(tasks: list[str], manager) -> list[Problem]:
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if not unknown:
        return []
    return [Problem("stage.evaluation.lm_eval.tasks", f"names unknown lm-eval task(s): {', '.join(unknown)}",
                    hint=f"trlm's own: trlm_demo; the reference's: {','.join(REFERENCE_TASKS)}; every name: "
                    "`lm_eval ls tasks`")]  # fmt: skip


def harness_model(model_dir: Path, batch_size: int, device: str | None):
    """lm-eval's HF model, decoding with special tokens kept: `<think>` and `</think>` are special tokens."""
    import torch
    from lm_eval.models.huggingface import HFLM

    class TrlmHFLM(HFLM):
        def tok_decode(self, tokens, skip_special_tokens: bool = False):
            return super().tok_decode(tokens, skip_special_tokens=False)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TrlmHFLM(pretrained=str(model_dir), batch_size=batch_size, device=device,
                    dtype="float32" if device == "cpu" else "auto")  # fmt: skip


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's {task: {"metric,filter": value}} as {"lm_eval/task/metric": value} (stderr left out)."""
    flat = {}
    for task, figures in results["results"].items():
        for key, value in figures.items():
            metric, _, _ = key.partition(",")
            if metric in ("alias", "sample_len") or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                flat[f"lm_eval/{task}/{metric}"] = float(value)
    return flat


@contextlib.contextmanager
def hub_data_needed(tasks: list[str]):
    try:
        yield
    except ConnectionError as error:  # datasets' offline / unreachable Hub errors are ConnectionErrors
        raise TrlmError(f"lm-eval tasks {','.join(tasks)} need their datasets from the Hugging Face Hub, out of "
                        f"reach here ({str(error).splitlines()[0]}): run where the Hub is reachable or its "
                        f"datasets are cached (HF_DATASETS_CACHE); tasks=trlm_demo runs offline") from None  # fmt: skip


def run_lm_eval(
    model_dir: Path, tasks: list[str], out_dir: Path, limit: int | None = None, batch_size: int = 16,
    device: str | None = None,
) -> dict[str, float]:  # fmt: skip
    """Runs the tasks on the model, writes `out_dir/lm_eval/`, returns the flattened metrics."""
    hub_tasks = [task for task in tasks if task not in LOCAL_TASK_NAMES]
    offline = bool(hub_tasks) and not hub_reachable()
    if offline:  # fail in seconds (or read the datasets cache) rather than retry an unreachable Hub for minutes
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    from lm_eval import simple_evaluate

    manager = task_manager()
    found = unknown_tasks(tasks, manager)
    if found:
        raise Problems(found)
    with hub_data_needed(tasks):
        if offline:  # their datasets now (cached, or one line), before the model loads
            manager.load(hub_tasks)
        model = harness_model(model_dir, batch_size, device)
        log.info("lm-eval %s on %s (chat template, few-shot as multi-turn%s)", ",".join(tasks), model_dir,
                 f", first {limit} rows" if limit else "")  # fmt: skip
        results = simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=limit, log_samples=True,
                                  apply_chat_template=True, fewshot_as_multiturn=True)  # fmt: skip
    target = out_dir / RESULTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for task, samples in results.pop("samples", {}).items():
        atomic_write_text(target / f"samples_{task}.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in samples))
    atomic_write_text(target / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return flat_metrics(results)


def parse_args(args: list[str]) -> tuple[Path, dict[str, str]]:
    paths = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(options) - {"tasks", "limit", "batch_size", "device"}
    if len(paths) != 1 or "tasks" not in options or unknown:
        raise TrlmError(USAGE)
    return project_path(paths[0]), options


def eval_command(args: list[str]) -> int:
    path, options = parse_args(args)
    model_dir, out_dir = model_dir_of(path)
    tasks = [t for t in options["tasks"].strip("[]").split(",") if t]
    try:
        limit = int(options["limit"]) if "limit" in options else None
        batch_size = int(options.get("batch_size", 16))
    except ValueError:
        raise TrlmError(f"limit and batch_size are whole numbers: {USAGE}") from None
    metrics = run_lm_eval(model_dir, tasks, out_dir, limit, batch_size, options.get("device"))
    for key, value in metrics.items():
        print(f"{key:<48} {value:.4f}")
    print(f"results: {out_dir / RESULTS_DIR / 'results.json'}")
    return 0
