"""One stage, start to finish: check, resolve the start model, load, train, evaluate, record.

`run_stage` is what the Hydra task function calls; it returns the run's objective (the summary
figure named by `stage.objective`), which is what a sweep optimises.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
from datasets import DatasetDict
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase, set_seed
from transformers.trainer_utils import get_last_checkpoint

from trlm import tracking
from trlm.config import TrainerKind
from trlm.data.blend import apply_length_policy, load_blend
from trlm.data.prepare import PreparedBlend
from trlm.errors import TrlmError
from trlm.evaluation import generation_eval
from trlm.lineage import StartPoint, resolve_start
from trlm.modeling import load_model, load_tokenizer, resolve_pretrained, stage_system_prompts, tiny_model_dir
from trlm.paths import project_path
from trlm.run_dir import (
    FINAL,
    METRICS,
    RUN_RECORD,
    SUMMARY,
    MetricsLog,
    git_state,
    is_finished,
    is_main_process,
    read_json,
    recipe_fingerprint,
    write_json,
)
from trlm.trainers import build_trainer, training_arguments
from trlm.validate import check_config, check_hardware

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"


def start_model_dir(cfg: DictConfig, start: StartPoint) -> str:
    """A local directory for the start point, building the tiny demo model when that is the base."""
    if start.kind == "base" and cfg.model.tiny is not None:
        cache = project_path(cfg.paths.cache_dir)
        return str(tiny_model_dir(cfg.model.tiny, cache, stage_system_prompts()))
    revision = cfg.model.revision if start.kind == "base" else None
    return resolve_pretrained(start.source, revision)


def check_run_dir(run_dir: Path, fingerprint: str) -> None:
    """A deterministic run directory may already hold work; only the same recipe may continue it."""
    record = read_json(run_dir / RUN_RECORD)
    if record and record.get("recipe_fingerprint") != fingerprint:
        raise TrlmError(
            f"{run_dir} holds a run of a different recipe (fingerprint {record.get('recipe_fingerprint')}, "
            f"now {fingerprint}): choose another run.name, or delete that directory to start over"
        )


def objective(metrics: dict[str, float], cfg: DictConfig) -> float:
    metric = cfg.stage.objective.metric
    if metric not in metrics:
        raise TrlmError(f"stage.objective.metric={metric!r} is not among the run's metrics: {sorted(metrics)}")
    return float(metrics[metric])


def last_logged(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last value of every per-step training metric (not eval, not the end-of-training totals)."""
    values: dict[str, float] = {}
    for entry in log_history:
        if "train_runtime" in entry or any(key.startswith("eval_") for key in entry):
            continue
        values.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")})
    return values


def data_record(cfg: DictConfig, prepared: PreparedBlend, blend: DatasetDict, too_long: dict[str, int]) -> dict:
    return {
        "name": cfg.data.name,
        "prepared": str(prepared.path),
        "config_hash": prepared.metadata["config_hash"],
        "sha256": prepared.metadata["content_sha256"],
        "rows": {split: len(rows) for split, rows in blend.items()},
        "too_long": {"policy": cfg.data.too_long.value, "max_length": cfg.stage.recipe.max_length, **too_long},
    }


def write_run_record(
    cfg: DictConfig, run_dir: Path, start: StartPoint, source: str, fingerprint: str, data: dict
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / RUN_RECORD,
        {
            "stage": cfg.stage.name,
            "run_name": cfg.run.name,
            "experiment": cfg.experiment,
            "recipe_fingerprint": fingerprint,
            "start": {**start.record(), "resolved": source},
            "data": data,
            "git": git_state(),
            "hardware": cfg.hardware.name,
            "world_size": cfg.hardware.devices_per_node * cfg.hardware.num_nodes,
            "versions": {lib.__name__: lib.__version__ for lib in (torch, transformers, trl, datasets)},
        },
    )


def held_out_conversations(cfg: DictConfig, eval_rows: datasets.Dataset) -> list[list[dict[str, str]]]:
    if cfg.stage.trainer == TrainerKind.dpo:  # the chosen conversation is the reference
        return [p + c for p, c in zip(eval_rows["prompt"], eval_rows["chosen"], strict=True)]
    return eval_rows["messages"]


def save_final(trainer: trl.SFTTrainer | trl.DPOTrainer, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> Path:
    """The final model + tokenizer, written under a temporary name and renamed when complete."""
    final, staging = run_dir / FINAL, run_dir / (FINAL + ".tmp")
    trainer.save_model(str(staging))
    if is_main_process():
        tokenizer.save_pretrained(str(staging))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    return final


def run_stage(cfg: DictConfig, run_dir: Path) -> float:
    check_config(cfg)
    start = resolve_start(cfg)
    check_hardware(cfg.hardware)
    fingerprint = recipe_fingerprint(cfg)
    check_run_dir(run_dir, fingerprint)
    if is_finished(run_dir):
        log.info("%s already finished (%s); returning its recorded objective", run_dir, SUMMARY)
        return objective(read_json(run_dir / SUMMARY)["metrics"], cfg)

    stage = cfg.stage
    log.info("stage=%s experiment=%s run_dir=%s start=%s", stage.name, cfg.run.name, run_dir, start.source)
    source = start_model_dir(cfg, start)  # before the data: a missing model is the cheaper error
    blend, prepared = load_blend(cfg.data, project_path(cfg.paths.blends_dir))
    tokenizer = load_tokenizer(source, stage)
    blend, too_long = apply_length_policy(blend, cfg.data.kind, tokenizer, stage.recipe.max_length, cfg.data.too_long)
    data = data_record(cfg, prepared, blend, too_long)
    log.info("blend %s: %s rows, sha256 %s", cfg.data.name, data["rows"], data["sha256"][:12])
    set_seed(stage.recipe.seed)  # before load: the rows added for new tokens are drawn at random
    model = load_model(source, tokenizer, cfg.hardware)
    log.info("model from %s: %.2fM parameters, vocab %d", source, model.num_parameters() / 1e6, len(tokenizer))
    if is_main_process():
        write_run_record(cfg, run_dir, start, source, fingerprint, data)

    tracking.configure(cfg, run_dir)
    args = training_arguments(
        stage, cfg.hardware, str(run_dir / CHECKPOINTS), f"{cfg.run.name}/{stage.name}", tracking.report_to(cfg)
    )
    trainer = build_trainer(
        stage, args, model, tokenizer, blend["train"], blend.get("eval"), [MetricsLog(run_dir / METRICS)]
    )
    generate = "eval" in blend and stage.evaluation.generate
    conversations = held_out_conversations(cfg, blend["eval"]) if generate else []
    checkpoint = get_last_checkpoint(args.output_dir) if cfg.run.resume and Path(args.output_dir).is_dir() else None
    metrics: dict[str, float] = {}
    if generate:  # the start model on the same prompts (a resume loads the checkpoint only in train())
        before, _ = generation_eval(model, tokenizer, conversations, stage.evaluation, stage.think_tokens)
        metrics.update({f"start_{key}": value for key, value in before.items() if key != "eval_prompts"})
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    train_output = trainer.train(resume_from_checkpoint=checkpoint)

    metrics.update({**last_logged(trainer.state.log_history), **train_output.metrics})
    metrics["train_loss"] = train_output.training_loss
    samples: list[dict[str, Any]] = []
    if "eval" in blend:
        metrics.update(trainer.evaluate())
    if generate:
        generated, samples = generation_eval(
            trainer.model, tokenizer, conversations, stage.evaluation, stage.think_tokens
        )
        metrics.update(generated)
    final = save_final(trainer, tokenizer, run_dir)
    value = objective(metrics, cfg)
    if is_main_process():
        if samples:
            (run_dir / "eval_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        write_json(  # last: its presence marks the run finished
            run_dir / SUMMARY,
            {
                "status": "completed",
                "stage": stage.name,
                "run_name": cfg.run.name,
                "final_model": str(final),
                "metrics_file": str(run_dir / METRICS),
                "data_sha256": data["sha256"],
                "start": start.record(),
                "global_step": trainer.state.global_step,
                "metrics": metrics,
                "objective": {**OmegaConf.to_container(stage.objective, enum_to_str=True), "value": value},
            },
        )
        log.info("finished: %s, summary %s", final, run_dir / SUMMARY)
    tracking.finish()
    return value
