"""Loading the model and tokenizer a stage starts from, and shaping them for the stage.

Where the start model is (a Hub snapshot, a path, the fetched copy) is trlm/model_source.py's
business; this module loads it, and builds the tiny demo model when that is the base.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from trlm.chat_template import IM_END, THINK_TOKENS, chatml_template
from trlm.config import HardwareConfig, ModelConfig, StageConfig, TinyModelConfig
from trlm.errors import TrlmError
from trlm.fsutil import atomic_dir
from trlm.lineage import StartPoint
from trlm.locks import FileLock
from trlm.model_source import pretrained_dir, tiny_model_path


def stage_tokenizer(tokenizer: PreTrainedTokenizerBase, stage: StageConfig) -> PreTrainedTokenizerBase:
    """Applies the stage's chat template, ChatML end/pad tokens and (idempotently) the think tokens."""
    if stage.think_tokens:
        missing = [token for token in THINK_TOKENS if token not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = chatml_template(stage.system_prompt)
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = IM_END
    tokenizer.padding_side = "right"
    return tokenizer


def attention_implementation(hardware: HardwareConfig) -> str:
    """The preset's attention; `auto`: flash-attention's varlen kernels where installed (a GPU), else sdpa."""
    if hardware.attn_implementation != "auto":
        return hardware.attn_implementation
    if hardware.accelerator != "cpu" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


@contextmanager
def loading(source: str, what: str) -> Iterator[None]:
    """A model directory that does not load (a garbage config, truncated weights) is one line naming it."""
    try:
        yield
    except Exception as error:  # transformers', safetensors' and tokenizers' own errors vary
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrlmError(f"{source}: its {what} does not load ({type(error).__name__}: {said}); is the model directory "
                        "complete? (a run's finished model is its final/)") from None  # fmt: skip


def load_model(
    source: str, tokenizer: PreTrainedTokenizerBase, hardware: HardwareConfig, new_token_init: str = "random"
) -> torch.nn.Module:
    """The causal LM at `source`, its embeddings grown to the tokenizer when tokens were added."""
    # fp32 master weights: bf16/fp16 presets train in autocast mixed precision.
    with loading(source, "model"):
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, attn_implementation=attention_implementation(hardware)
        )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=new_token_init == "mean")
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_model_dir(tiny: TinyModelConfig, cache_dir: Path) -> Path:
    """Builds (once) a tiny random-init Llama and its demo tokenizer; returns their directory."""
    target = tiny_model_path(tiny, cache_dir)
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock"), "building the tiny demo model").hold(wait=True):
        if not (target / "config.json").exists():  # else built by another process while we waited
            build_tiny_model(tiny, target)
    return target


def start_model_dir(model: ModelConfig, start: StartPoint, cache_dir: Path) -> str:
    """A local directory for the start point, building the tiny demo model when that is the base."""
    if start.kind == "base" and model.tiny is not None:
        return str(tiny_model_dir(model.tiny, cache_dir))
    return pretrained_dir(model, start)


def build_tiny_model(tiny: TinyModelConfig, target: Path) -> None:
    from trlm.demo.tokenizer import train_demo_tokenizer

    tokenizer = train_demo_tokenizer(tiny.vocab_size, list(tiny.tokenizer_texts))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        rope_theta=tiny.rope_theta,
        tie_word_embeddings=True,  # as SmolLM2
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(tiny.seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def load_tokenizer(source: str, stage: StageConfig) -> PreTrainedTokenizerBase:
    with loading(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source)
    return stage_tokenizer(tokenizer, stage)
