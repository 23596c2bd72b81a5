"""One stage, start to finish: execute a `StagePlan` — prepare, claim the run directory, train, evaluate, record.

`execute(plan)` is what the Hydra task function calls once `plan_stage` has checked and decided
everything; it returns the run's objective (the summary figure named by `stage.objective`, as a
`StageOutcome` that also says whether the trial was pruned), which is what a sweep optimises. It
raises `TrlmError` for anything the user can fix; nothing is written to the run directory before
the checks that need this machine (`runtime_problems`) pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed

from trlm import tracking
from trlm.callbacks import CheckpointMarker, DivergenceGuard, MetricsLog, TrainingDiverged, TrialReporter, WandbRecord
from trlm.chat_template import chatml_template
from trlm.config import Accelerator, Precision, TrainerKind
from trlm.data.blend import apply_length_policy, load_blend
from trlm.distributed import broadcast_from_main, is_main_process, rank, visible_devices, world_size
from trlm.environment import environment_record
from trlm.errors import Problem, Problems, TrlmError
from trlm.evaluation import generation_eval
from trlm.fingerprint import differences, fingerprint, plain, with_data
from trlm.fsutil import atomic_dir, disk_space
from trlm.lineage import StartPoint
from trlm.locks import FileLock
from trlm.machine import gpu_share
from trlm.modeling import attention_implementation, load_model, load_tokenizer, start_model_dir
from trlm.padding_free import attention_for_padding_free, keep_rows_apart, make_padding_free
from trlm.portable import make_portable
from trlm.preemption import PreemptionCheckpoint
from trlm.records import RunRecord, Summary
from trlm.resume import finish_from_checkpoint, training_done, whole_run_loss
from trlm.run_dir import (
    ADAPTER,
    FINAL,
    LOCK,
    LOG_FILE,
    METRICS,
    RUN_RECORD,
    SUMMARY,
    git_state,
    has_progress,
    is_finished,  # fmt: skip
    latest_complete_checkpoint,
    save_command_records,
)
from trlm.stage_plan import StageOutcome, StagePlan
from trlm.trainers import build_trainer, training_arguments

log = logging.getLogger(__name__)


def runtime_problems(plan: StagePlan) -> list[Problem]:
    """What only this machine can say: its GPUs and ranks, the attention packing needs, lm-eval's tasks."""
    from trlm.machine import hardware_problems

    found = hardware_problems(plan.hardware)
    hardware = plan.hardware
    if plan.stage.recipe.packing and attention_for_padding_free(attention_implementation(hardware),
                                                                hardware.accelerator) is None:  # fmt: skip
        rule = (f"needs an attention that keeps rows apart, which attn_implementation="
                f"{hardware.attn_implementation} cannot on {hardware.accelerator.value}")  # fmt: skip
        fix = "use sdpa (on a GPU: torch >= 2.10, whose flash varlen kernel keeps rows apart)"
        found.append(Problem("stage.recipe.packing", rule, "true", fix))
    tasks = list(plan.stage.evaluation.lm_eval.tasks)
    if tasks:  # an unknown task fails now, not after training
        from trlm.harness import task_manager, unknown_tasks

        found += unknown_tasks(tasks, task_manager())
    return found


@contextmanager
def bars_closed_on_error(trainer: Trainer):
    """A run that stops on an error closes the Trainer's progress bar first, so that the error's line
    is the terminal's last, not overdrawn by the bar's."""
    try:
        yield
    except BaseException:
        for callback in trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.close()
        raise


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def objective(metrics: dict[str, float], metric: str) -> float:
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


class RunLogHandler(logging.FileHandler):
    """train.log's writer: a line it cannot write (a full disk) is lost quietly; the run says what went wrong."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def run_log(run_dir: Path):
    """Appends this process's log lines to the run's train.log while it works on the run."""
    handler = RunLogHandler(run_dir / LOG_FILE)
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


def save_final(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, plan: StagePlan) -> Path:
    """The final model + tokenizer, written under a temporary name and renamed when complete: in the
    preset's training precision (bf16 presets: bf16, as the reference saves), loadable by transformers
    4.5x and 5.x, its chat template plain Jinja (trlm/portable.py)."""
    final = plan.run_dir / FINAL
    if plan.peft is not None:  # the adapter beside final/; final/ the merged model, portable as any
        if is_main_process():
            with atomic_dir(plan.run_dir / ADAPTER) as staging:
                trainer.model.save_pretrained(str(staging))
        trainer.model = trainer.model.merge_and_unload()
    if plan.hardware.precision == Precision.bf16:  # the fp32 master weights are not needed any more
        trainer.model.to(torch.bfloat16)
    with atomic_dir(final) if is_main_process() else nullcontext(final.with_name(FINAL + ".tmp")) as staging:
        trainer.save_model(str(staging))  # every rank: TRL gathers what it must, rank 0 writes
        if is_main_process():
            tokenizer.save_pretrained(str(staging))
            make_portable(staging, chatml_template(plan.stage.system_prompt, generation_markers=False))
    return final


def evaluate_stage(
    trainer: Trainer, plan: StagePlan, tokenizer, blend: DatasetDict, conversations
) -> tuple[dict, list]:
    metrics: dict[str, float] = {}
    if "eval" in blend:
        metrics.update(trainer.evaluate())  # every rank: a collective under DDP
    samples: list[dict[str, Any]] = []
    if conversations and is_main_process():  # generation on rank 0 only; the others wait for its figures
        generated, samples = generation_eval(
            trainer.model, tokenizer, conversations, plan.stage.evaluation, plan.stage.think_tokens
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


def prepare_inputs(plan: StagePlan, args: TrainingArguments) -> StageInputs:
    # Making the args joined the process group (under torchrun / Slurm): rank 0 prepares the blend
    # and builds the start model while the other ranks wait, then they reuse what it made. Global
    # rank 0, not one per node: the nodes share the output root.
    with args.main_process_first(local=False, desc="preparing the blend and the start model"):
        source = start_model_dir(plan.model, plan.start, plan.cache_dir)  # before the data: the cheaper error
        blend, prepared = load_blend(plan.data, plan.blends_dir)
    tokenizer = load_tokenizer(source, plan.stage)
    max_length = plan.stage.recipe.max_length
    blend, too_long = apply_length_policy(blend, plan.data.kind, tokenizer, max_length, plan.data.too_long)
    data = {
        "name": plan.data.name,
        **prepared,
        "rows": {split: len(rows) for split, rows in blend.items()},
        "too_long": {"policy": plan.data.too_long.value, "max_length": max_length, **too_long},
    }
    return StageInputs(plan.start, source, tokenizer, blend, data, with_data(plan.fingerprint_parts, data))


def benchmarks(plan: StagePlan, final: Path) -> dict[str, float]:
    """lm-eval on the final model when the stage names tasks (rank 0 runs it, every rank gets the figures)."""
    harness = plan.stage.evaluation.lm_eval
    if not harness.tasks:
        return {}
    figures = {}
    if is_main_process():
        from trlm.harness import run_lm_eval

        device = "cpu" if plan.hardware.accelerator == Accelerator.cpu else "cuda"  # ROCm's torch answers to "cuda"
        figures = run_lm_eval(final, list(harness.tasks), plan.run_dir, harness.limit, harness.batch_size, device)
    return broadcast_from_main(figures)


def execute(plan: StagePlan) -> StageOutcome:
    found = runtime_problems(plan)
    if found:
        raise Problems(found)
    args = training_arguments(plan)
    inputs = prepare_inputs(plan, args)
    lock = FileLock(plan.run_dir / LOCK, f"stage {plan.stage.name} of run {plan.run.name}")
    # A sweep trial waits for its directory: the one holding it is a job of a sweeper that died, still training
    # this trial; its re-run then reads the result. A single run is refused at once, naming the holder.
    with lock.hold(wait=plan.run.trial is not None) if is_main_process() else nullcontext():
        finished = claim(plan.run_dir, inputs.parts)
        if finished is not None:
            log.info("%s already finished (%s); re-reading its objective", plan.run_dir, SUMMARY)
            return StageOutcome(objective(finished.metrics, plan.stage.objective.metric), finished.pruned)
        with run_log(plan.run_dir) if is_main_process() else nullcontext():
            return train_stage(plan, inputs, args)


def record_run(plan: StagePlan, inputs: StageInputs, git: dict[str, Any]) -> None:
    save_command_records(plan.run_dir, plan.config_yaml, plan.overrides)
    RunRecord(
        stage=plan.stage.name,
        run_name=plan.run.name,
        experiment=plan.experiment,
        fingerprint=fingerprint(inputs.parts),
        fingerprint_parts=inputs.parts,
        start={**inputs.start.record(), "resolved": inputs.source},
        data=inputs.data,
        hardware=plan.hardware.name,
        world_size=world_size(),
        global_batch=plan.global_batch,
        git=git,
        **environment_record(),  # python, every dependency's version, the installed set's hash
        sweep=plan.run.sweep if plan.run.trial is not None else None,
        trial=plan.run.trial,
        peft=plain(plan.peft) if plan.peft else None,
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        slurm_node=os.environ.get("SLURMD_NODENAME"),
        devices=visible_devices(),
    ).save(plan.run_dir / RUN_RECORD)


def train_stage(plan: StagePlan, inputs: StageInputs, args: TrainingArguments) -> StageOutcome:
    stage, hardware, run_dir = plan.stage, plan.hardware, plan.run_dir
    tokenizer, blend, data = inputs.tokenizer, inputs.blend, inputs.data
    threads = hardware.cpu_threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    if threads:  # the cores this process was given (a Slurm task's allocation): no oversubscription
        torch.set_num_threads(threads)
    log.info("stage=%s run=%s run_dir=%s start=%s", stage.name, plan.run.name, run_dir, inputs.start.source)
    log.info("blend %s: %s rows, sha256 %s", plan.data.name, data["rows"], data["sha256"][:12])
    set_seed(stage.recipe.seed)  # before load: the rows added for new tokens are drawn at random
    model = load_model(inputs.source, tokenizer, hardware, plan.model.new_token_init)
    log.info("model from %s: %.2fM parameters, vocab %d", inputs.source, model.num_parameters() / 1e6, len(tokenizer))
    git = git_state()
    if is_main_process():
        record_run(plan, inputs, git)

    tracking.configure(plan.tracking, run_dir, data["sha256"], git.get("sha"))
    reporter = TrialReporter(plan.trial) if plan.trial else None
    preemption = PreemptionCheckpoint()
    callbacks = [MetricsLog(run_dir / METRICS), DivergenceGuard(), CheckpointMarker(), preemption,
                 *([reporter] if reporter else [])]  # fmt: skip
    if plan.tracking.enabled:
        callbacks.append(WandbRecord(plan.config, data["sha256"], git.get("sha")))
    attention = attention_implementation(hardware)
    dpo_padding_free = (attention, hardware.accelerator) if hardware.padding_free else None
    trainer = build_trainer(plan, args, model, tokenizer, blend["train"], blend.get("eval"), callbacks,
                            padding_free=dpo_padding_free)  # fmt: skip
    if stage.trainer == TrainerKind.sft and stage.recipe.packing:  # TRL's bfd packing concatenates rows itself
        keep_rows_apart(model, attention, hardware.accelerator)  # checked in runtime_problems
    elif stage.trainer == TrainerKind.sft and hardware.padding_free:
        make_padding_free(trainer, model, attention, hardware.accelerator)
    generate = "eval" in blend and stage.evaluation.generate
    conversations = plan.trainer.held_out(blend["eval"]) if generate else []
    checkpoint = latest_complete_checkpoint(Path(args.output_dir)) if plan.run.resume else None
    metrics: dict[str, float] = {}
    if conversations and is_main_process():  # the start model on the same prompts (a resume loads in train())
        before, _ = generation_eval(model, tokenizer, conversations, stage.evaluation, stage.think_tokens)
        metrics.update({f"start_{key}": value for key, value in before.items() if key != "eval_prompts"})
    metrics = broadcast_from_main(metrics)
    share = gpu_share(hardware.trials_per_gpu)  # 1/k of the card's memory where k trials share it
    with disk_space(run_dir, "training (a checkpoint)"), bars_closed_on_error(trainer), share:
        if checkpoint and training_done(checkpoint):  # nothing left to train: finish from it
            trained = finish_from_checkpoint(trainer, checkpoint, run_dir / METRICS)
        else:
            if checkpoint:
                log.info("resuming from %s", checkpoint)
            trained = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None).metrics
    preemption.hand_over()  # stopped for a requeue: the requeued job finishes the run
    if world_size() > 1:  # every rank says what it ends with: DDP keeps them equal
        log.warning("rank %d/%d: final weights sha256 %s", rank(), world_size(), weights_digest(trainer.model))

    metrics.update({**last_logged(trainer.state.log_history), **trained})
    metrics["train_loss"] = whole_run_loss(trainer.state.log_history)  # every step's, across resumes
    evaluated, samples = evaluate_stage(trainer, plan, tokenizer, blend, conversations)
    metrics.update(evaluated)
    with disk_space(run_dir, "saving the final model"):
        final = save_final(trainer, tokenizer, plan)
    metrics.update(benchmarks(plan, final))
    value = objective(metrics, stage.objective.metric)
    if not math.isfinite(value):  # a diverged run is a failure, never a finished run to start from
        raise TrainingDiverged(f"the objective {stage.objective.metric} is {value}: the run failed (no summary is "
                               f"written; the next stage will not start from it)")  # fmt: skip
    pruned = bool(reporter and reporter.pruned)
    if is_main_process():
        if samples:
            (run_dir / "eval_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        tracking.record_final(metrics, samples)
        Summary(  # last: its presence marks the run finished
            stage=stage.name,
            run_name=plan.run.name,
            final_model=str(final),
            metrics_file=str(run_dir / METRICS),
            data_sha256=data["sha256"],
            start=inputs.start.record(),
            global_step=trainer.state.global_step,
            metrics=metrics,
            objective={**asdict(stage.objective), "direction": stage.objective.direction.value, "value": value},
            sweep=plan.run.sweep if plan.run.trial is not None else None,
            trial=plan.run.trial,
            pruned=pruned,
        ).save(run_dir / SUMMARY)
        log.info("finished: %s, summary %s", final, run_dir / SUMMARY)
    return StageOutcome(value, pruned)
