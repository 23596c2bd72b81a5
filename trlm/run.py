"""One stage, start to finish: check, prepare, claim the run directory, train, evaluate, record.

`run_stage` is what the Hydra task function calls; it returns the run's objective (the summary
figure named by `stage.objective`), which is what a sweep optimises. It raises `TrlmError` for
anything the user can fix; nothing is written to the run directory before the checks pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
from datasets import DatasetDict
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from trlm import tracking
from trlm.chat_template import chatml_template
from trlm.config import Precision, TrainerKind
from trlm.data.blend import apply_length_policy, load_blend
from trlm.distributed import broadcast_from_main, is_main_process, rank, visible_devices, world_size
from trlm.errors import TrlmError
from trlm.evaluation import generation_eval
from trlm.export import make_portable
from trlm.fingerprint import differences, fingerprint, fingerprint_parts, global_batch
from trlm.fsutil import atomic_dir
from trlm.lineage import StartPoint, resolve_start
from trlm.locks import FileLock
from trlm.model_fetch import check_architecture
from trlm.modeling import attention_implementation, load_model, load_tokenizer, resolve_pretrained, tiny_model_dir
from trlm.padding_free import attention_for_padding_free, keep_rows_apart, make_padding_free
from trlm.paths import project_path
from trlm.preemption import PreemptionCheckpoint
from trlm.pruning import TrialReporter, check_prunable, reports_to_trial
from trlm.records import RunRecord, Summary
from trlm.run_dir import (
    CHECKPOINTS,
    FINAL,
    LOCK,
    LOG_FILE,
    METRICS,
    RUN_RECORD,
    SUMMARY,
    CheckpointMarker,
    MetricsLog,
    git_state,
    has_progress,
    is_finished,
    latest_complete_checkpoint,
    save_command_records,
)
from trlm.trainers import TRAINERS, build_trainer, training_arguments
from trlm.validate import check_config, check_hardware

log = logging.getLogger(__name__)


def start_model_dir(cfg: DictConfig, start: StartPoint) -> str:
    """A local directory for the start point, building the tiny demo model when that is the base."""
    if start.kind == "base" and cfg.model.tiny is not None:
        return str(tiny_model_dir(cfg.model.tiny, project_path(cfg.paths.cache_dir)))
    if start.kind != "base":
        return resolve_pretrained(start.source)
    package = cfg.model.package
    fallback = project_path(package.directory) if package is not None else None
    if package is not None and start.source == package.directory:  # the fetched copy itself
        if not (fallback / "config.json").exists():
            raise TrlmError(f"model={cfg.model.name} is not fetched yet: run `trlm model fetch {package.alias}` once")
        source = str(fallback)
    else:
        source = resolve_pretrained(start.source, cfg.model.revision, fallback)
    check_architecture(Path(source), dict(cfg.model.architecture), cfg.model.name)
    return source


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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


def data_record(cfg: DictConfig, blend: DatasetDict, prepared: dict[str, Any], too_long: dict[str, int]) -> dict:
    return {
        "name": cfg.data.name,
        **prepared,
        "rows": {split: len(rows) for split, rows in blend.items()},
        "too_long": {"policy": cfg.data.too_long.value, "max_length": cfg.stage.recipe.max_length, **too_long},
    }


def check_continuation(run_dir: Path, parts: dict[str, str]) -> None:
    """A directory holding work continues only under the same fingerprint; one without work is free."""
    record = RunRecord.load(run_dir / RUN_RECORD)
    if record is None or record.fingerprint == fingerprint(parts) or not has_progress(run_dir):
        return
    changed = differences(record.fingerprint_parts, parts)
    if "data" in changed:
        raise TrlmError(
            f"{run_dir} was trained on blend sha256 {record.fingerprint_parts.get('data', '?')[:16]}, but the "
            f"blend now has sha256 {parts['data'][:16]} (its sources changed): restore the original sources to "
            f"resume, or start over with another run.name (or delete {run_dir})"
        )
    raise TrlmError(
        f"{run_dir} holds a run of a different recipe ({', '.join(changed)} changed since it started): "
        f"choose another run.name, or delete that directory to start over"
    )


@contextmanager
def run_log(run_dir: Path):
    """Appends this process's log lines to the run's train.log while it works on the run."""
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def claim(run_dir: Path, parts: dict[str, str]) -> Summary | None:
    """Rank 0 decides, every rank learns: the finished run's summary, or None to train; or the error."""
    outcome: tuple[str, Any] = ("train", None)
    if is_main_process():
        try:
            check_continuation(run_dir, parts)
            if is_finished(run_dir):
                outcome = ("finished", Summary.load(run_dir / SUMMARY))
        except TrlmError as error:
            outcome = ("error", str(error))
    kind, payload = broadcast_from_main(outcome)
    if kind == "error":
        raise TrlmError(payload)
    return payload


def save_final(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, cfg: DictConfig, run_dir: Path) -> Path:
    """The final model + tokenizer, written under a temporary name and renamed when complete: in the
    preset's training precision (bf16 presets: bf16, as the reference saves), loadable by transformers
    4.5x and 5.x, its chat template plain Jinja (trlm/export.py)."""
    final = run_dir / FINAL
    if cfg.hardware.precision == Precision.bf16:  # the fp32 master weights are not needed any more
        trainer.model.to(torch.bfloat16)
    with atomic_dir(final) if is_main_process() else nullcontext(final.with_name(FINAL + ".tmp")) as staging:
        trainer.save_model(str(staging))  # every rank: TRL gathers what it must, rank 0 writes
        if is_main_process():
            tokenizer.save_pretrained(str(staging))
            make_portable(staging, chatml_template(cfg.stage.system_prompt, generation_markers=False))
    return final


def evaluate(trainer: Trainer, cfg: DictConfig, tokenizer, blend: DatasetDict, conversations) -> tuple[dict, list]:
    metrics: dict[str, float] = {}
    if "eval" in blend:
        metrics.update(trainer.evaluate())  # every rank: a collective under DDP
    samples: list[dict[str, Any]] = []
    if conversations and is_main_process():  # generation on rank 0 only; the others wait for its figures
        stage = cfg.stage
        generated, samples = generation_eval(
            trainer.model, tokenizer, conversations, stage.evaluation, stage.think_tokens
        )
        metrics.update(generated)
    return broadcast_from_main(metrics), samples


@dataclass
class StageInputs:
    """What a stage trains from, resolved and prepared, and the fingerprint parts they make."""

    start: StartPoint
    source: str  # the start model's local directory
    tokenizer: PreTrainedTokenizerBase
    blend: DatasetDict
    data: dict[str, Any]
    parts: dict[str, str]


def prepare_inputs(cfg: DictConfig, start: StartPoint, args: TrainingArguments) -> StageInputs:
    # Making the args joined the process group (under torchrun / Slurm): rank 0 prepares the blend
    # and builds the start model while the other ranks wait, then they reuse what it made. Global
    # rank 0, not one per node: the nodes share the output root.
    with args.main_process_first(local=False, desc="preparing the blend and the start model"):
        source = start_model_dir(cfg, start)  # before the data: a missing model is the cheaper error
        blend, prepared = load_blend(cfg.data, project_path(cfg.paths.blends_dir))
    tokenizer = load_tokenizer(source, cfg.stage)
    max_length = cfg.stage.recipe.max_length
    blend, too_long = apply_length_policy(blend, cfg.data.kind, tokenizer, max_length, cfg.data.too_long)
    data = data_record(cfg, blend, prepared, too_long)
    return StageInputs(start, source, tokenizer, blend, data, fingerprint_parts(cfg, start.record(), data))


class WandbRecord(TrainerCallback):
    """trlm's config and hashes into the W&B run, once TRL's own callback (earlier in the list) has started it."""

    def __init__(self, cfg: DictConfig, data_sha256: str, git_sha: str | None) -> None:
        self.cfg, self.data_sha256, self.git_sha = cfg, data_sha256, git_sha

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            tracking.record_config(self.cfg, self.data_sha256, self.git_sha)


def benchmarks(cfg: DictConfig, final: Path, run_dir: Path) -> dict[str, float]:
    """lm-eval on the final model when the stage names tasks (rank 0 runs it, every rank gets the figures)."""
    harness = cfg.stage.evaluation.lm_eval
    if not harness.tasks:
        return {}
    figures = {}
    if is_main_process():
        from trlm.harness import run_lm_eval

        device = "cpu" if cfg.hardware.accelerator == "cpu" else "cuda"  # ROCm's torch answers to "cuda" too
        figures = run_lm_eval(final, list(harness.tasks), run_dir, harness.limit, harness.batch_size, device)
    return broadcast_from_main(figures)


def run_stage(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> float:
    check_config(cfg)
    check_hardware(cfg.hardware)
    check_prunable(cfg)
    if cfg.stage.evaluation.lm_eval.tasks:  # an unknown task fails now, not after training
        from trlm.harness import check_tasks, task_manager

        check_tasks(list(cfg.stage.evaluation.lm_eval.tasks), task_manager())
    attention = attention_implementation(cfg.hardware)
    if cfg.stage.recipe.packing and attention_for_padding_free(attention, cfg.hardware.accelerator) is None:
        raise TrlmError(f"stage.recipe.packing needs an attention that keeps rows apart, which attn_implementation="
                        f"{cfg.hardware.attn_implementation} cannot on {cfg.hardware.accelerator}: use sdpa "
                        f"(on a GPU: torch >= 2.10, whose flash varlen kernel keeps rows apart)")  # fmt: skip
    tracking.check(cfg)
    start = resolve_start(cfg)
    stage = cfg.stage
    args = training_arguments(
        stage,
        cfg.hardware,
        str(run_dir / CHECKPOINTS),
        f"{cfg.run.name}/{stage.name}",
        tracking.report_to(cfg),
        evaluate_every=cfg.optuna.report_every if reports_to_trial(cfg) else None,
    )
    inputs = prepare_inputs(cfg, start, args)
    lock = FileLock(run_dir / LOCK, f"stage {stage.name} of run {cfg.run.name}")
    with lock.hold() if is_main_process() else nullcontext():
        finished = claim(run_dir, inputs.parts)
        if finished is not None:
            log.info("%s already finished (%s); re-reading its objective", run_dir, SUMMARY)
            return objective(finished.metrics, cfg)
        with run_log(run_dir) if is_main_process() else nullcontext():
            return train(cfg, run_dir, list(overrides), inputs, args)


def train(cfg: DictConfig, run_dir: Path, overrides: list[str], inputs: StageInputs, args: TrainingArguments) -> float:
    stage, start, source, tokenizer = cfg.stage, inputs.start, inputs.source, inputs.tokenizer
    blend, data, parts = inputs.blend, inputs.data, inputs.parts
    threads = cfg.hardware.cpu_threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    if threads:  # the cores this process was given (a Slurm task's allocation): no oversubscription
        torch.set_num_threads(threads)
    log.info("stage=%s run=%s run_dir=%s start=%s", stage.name, cfg.run.name, run_dir, start.source)
    log.info("blend %s: %s rows, sha256 %s", cfg.data.name, data["rows"], data["sha256"][:12])
    set_seed(stage.recipe.seed)  # before load: the rows added for new tokens are drawn at random
    model = load_model(source, tokenizer, cfg.hardware, cfg.model.new_token_init)
    log.info("model from %s: %.2fM parameters, vocab %d", source, model.num_parameters() / 1e6, len(tokenizer))
    git = git_state()
    if is_main_process():
        save_command_records(run_dir, cfg, overrides)
        RunRecord(
            stage=stage.name,
            run_name=cfg.run.name,
            experiment=cfg.experiment,
            fingerprint=fingerprint(parts),
            fingerprint_parts=parts,
            start={**start.record(), "resolved": source},
            data=data,
            hardware=cfg.hardware.name,
            world_size=world_size(),
            global_batch=global_batch(cfg),
            git=git,
            versions={lib.__name__: lib.__version__ for lib in (torch, transformers, trl, datasets)},
            sweep=cfg.run.sweep if cfg.run.trial is not None else None,
            trial=cfg.run.trial,
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            slurm_node=os.environ.get("SLURMD_NODENAME"),
            devices=visible_devices(),
        ).save(run_dir / RUN_RECORD)

    tracking.configure(cfg, run_dir, data["sha256"], git.get("sha"))
    reporter = TrialReporter(cfg) if reports_to_trial(cfg) else None
    preemption = PreemptionCheckpoint()
    callbacks = [MetricsLog(run_dir / METRICS), CheckpointMarker(), preemption, *([reporter] if reporter else [])]
    if tracking.enabled(cfg):
        callbacks.append(WandbRecord(cfg, data["sha256"], git.get("sha")))
    attention = attention_implementation(cfg.hardware)
    dpo_padding_free = (attention, cfg.hardware.accelerator) if cfg.hardware.padding_free else None
    trainer = build_trainer(stage, args, model, tokenizer, blend["train"], blend.get("eval"), callbacks,
                            ref_cache_dir=project_path(cfg.paths.cache_dir) / "ref_logps",
                            padding_free=dpo_padding_free)  # fmt: skip
    if stage.trainer == TrainerKind.sft and stage.recipe.packing:  # TRL's bfd packing concatenates rows itself
        keep_rows_apart(model, attention, cfg.hardware.accelerator)  # checked in run_stage
    elif stage.trainer == TrainerKind.sft and cfg.hardware.padding_free:
        make_padding_free(trainer, model, attention, cfg.hardware.accelerator)
    generate = "eval" in blend and stage.evaluation.generate
    conversations = TRAINERS[stage.trainer].held_out(blend["eval"]) if generate else []
    checkpoint = latest_complete_checkpoint(Path(args.output_dir)) if cfg.run.resume else None
    metrics: dict[str, float] = {}
    if conversations and is_main_process():  # the start model on the same prompts (a resume loads in train())
        before, _ = generation_eval(model, tokenizer, conversations, stage.evaluation, stage.think_tokens)
        metrics.update({f"start_{key}": value for key, value in before.items() if key != "eval_prompts"})
    metrics = broadcast_from_main(metrics)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    preemption.hand_over()  # stopped for a requeue: the requeued job finishes the run
    if world_size() > 1:  # every rank says what it ends with: DDP keeps them equal
        log.warning("rank %d/%d: final weights sha256 %s", rank(), world_size(), weights_digest(trainer.model))

    metrics.update({**last_logged(trainer.state.log_history), **train_output.metrics})
    metrics["train_loss"] = train_output.training_loss
    evaluated, samples = evaluate(trainer, cfg, tokenizer, blend, conversations)
    metrics.update(evaluated)
    final = save_final(trainer, tokenizer, cfg, run_dir)
    metrics.update(benchmarks(cfg, final, run_dir))
    value = objective(metrics, cfg)
    if not math.isfinite(value):
        log.warning("objective %s is %s", stage.objective.metric, value)
    if is_main_process():
        if samples:
            (run_dir / "eval_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        tracking.record_final(metrics, samples)
        Summary(  # last: its presence marks the run finished
            stage=stage.name,
            run_name=cfg.run.name,
            final_model=str(final),
            metrics_file=str(run_dir / METRICS),
            data_sha256=data["sha256"],
            start=start.record(),
            global_step=trainer.state.global_step,
            metrics=metrics,
            objective={**OmegaConf.to_container(stage.objective, enum_to_str=True), "value": value},
            sweep=cfg.run.sweep if cfg.run.trial is not None else None,
            trial=cfg.run.trial,
            pruned=bool(reporter and reporter.pruned),
        ).save(run_dir / SUMMARY)
        log.info("finished: %s, summary %s", final, run_dir / SUMMARY)
    return value
