# trlm: the two commands a new user needs are `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build on this machine's disk; on a GPU machine install the matching CUDA/ROCm build first.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-clean sweep-demo lora-vs-full slurm-up slurm-down test test-fast bench bench-sweep bench-slurm bench-train lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"        # first: a range that admits newer torch would pull a CUDA build
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,gguf,eval,math,dashboard,rdb]"   # gguf: `trlm model fetch`; eval: `trlm eval`; math: the math_equivalent reward; dashboard, rdb: sweeps (and their tests)
	touch $(STAMP)

# The three demo stages in order (each resumes or skips if already done), the report's future work
# (GRPO with verifiable rewards) as a fourth, then their figures.
demo: $(STAMP)
	$(BIN)/python train.py experiment=demo stage=sft
	$(BIN)/python train.py experiment=demo stage=sft_think
	$(BIN)/python train.py experiment=demo stage=dpo
	$(BIN)/python train.py experiment=demo stage=grpo
	$(BIN)/trlm eval outputs/demo/dpo tasks=trlm_demo
	$(BIN)/trlm results outputs/demo

demo-clean:
	rm -rf outputs/demo

# A small Optuna sweep on CPU (learning rate of the demo's stage 1, which starts from the base
# model: nothing else needed): 6 trials, 2 at a time, pruning on. Study in outputs/demo/sweeps/lr/.
sweep-demo: $(STAMP)
	$(BIN)/python train.py -m experiment=demo stage=sft sweep=lr hydra.sweeper.n_trials=6 \
		hydra.sweeper.n_jobs=2 stage.recipe.max_steps=150 stage.evaluation.generate=false
	$(BIN)/trlm sweep outputs/demo/sweeps/lr/sft

# LoRA Without Regret's question on the demo: the best learning rate of LoRA over full fine-tuning's,
# for stage 3 (DPO from stage 2's model; it adds no token, which LoRA would leave untrained): a full
# fine-tuning sweep and a LoRA sweep (rank x learning rate) over the same learning-rate range, against
# held-out DPO loss; then trlm compare of the two studies prints each best and their ratio (~10 min).
LORA_SWEEP = -m experiment=demo stage=dpo hydra.sweeper.n_trials=10 hydra.sweeper.n_jobs=2 \
	stage.recipe.max_steps=100 stage.evaluation.generate=false stage.objective.metric=eval_loss \
	stage.objective.direction=minimize 'stage.recipe.learning_rate=tag(log, interval(1e-6, 1e-2))'
lora-vs-full: $(STAMP)
	$(BIN)/python train.py experiment=demo stage=sft
	$(BIN)/python train.py experiment=demo stage=sft_think
	$(BIN)/python train.py $(LORA_SWEEP) sweep=lr
	$(BIN)/python train.py $(LORA_SWEEP) sweep=lora
	$(BIN)/trlm compare outputs/demo/sweeps/lr/dpo outputs/demo/sweeps/lora/dpo --out outputs/demo/lora-vs-full

# The local Slurm dev cluster (two MI300x-shaped nodes x 8 fake GPUs on this machine, as root):
# launcher=local_slurm submits to it; the Slurm tests run against it (skipped while it is down).
slurm-up:
	bash scripts/slurm/up.sh

slurm-down:
	bash scripts/slurm/down.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup   # one worker per core (tests/conftest.py splits the threads)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Blend preparation at 1x and 10x source size: rows/s and peak memory (see bench/prepare_bench.py).
bench: $(STAMP)
	$(BIN)/python bench/prepare_bench.py

# Asynchronous vs batch-synchronous trials, pruning on vs off (see bench/sweep_bench.py): ~10 min.
bench-sweep: $(STAMP)
	$(BIN)/python bench/sweep_bench.py

# Padding-free SFT vs the padded reference recipe, DPO with precomputed reference log-probs (bench/train_bench.py).
bench-train: $(STAMP)
	$(BIN)/python bench/train_bench.py

# What Slurm adds to a job: submission-to-start latency, overhead per trial (bench/slurm_bench.py; needs slurm-up).
bench-slurm: $(STAMP)
	$(BIN)/python bench/slurm_bench.py

lint: $(STAMP)
	$(BIN)/ruff check trlm hydra_plugins tests bench train.py
	$(BIN)/ruff format --check trlm hydra_plugins tests bench train.py

format: $(STAMP)
	$(BIN)/ruff format trlm hydra_plugins tests bench train.py
	$(BIN)/ruff check --fix trlm hydra_plugins tests bench train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
