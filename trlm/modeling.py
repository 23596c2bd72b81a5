"""Loading the model and tokenizer a stage starts from, and shaping them for the stage.

A start model is a local directory or a Hub id. Hub ids are resolved through the local cache
first; when they are not cached and the Hub cannot be reached, trlm says so at once instead of
letting transformers retry for a minute.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from trlm.chat_template import IM_END, THINK_TOKENS, chatml_template
from trlm.config import HardwareConfig, StageConfig, TinyModelConfig
from trlm.errors import TrlmError
from trlm.fsutil import atomic_dir
from trlm.hub import hub_reachable
from trlm.locks import FileLock

log = logging.getLogger(__name__)


def looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def check_model_dir(path: Path, given: str) -> None:
    if (path / "config.json").exists():
        return
    hint = f"; its finished model is {path / 'final'}" if (path / "final" / "config.json").exists() else ""
    raise TrlmError(f"{given} is not a model directory (no config.json in {path}){hint}")


def resolve_pretrained(name_or_path: str, revision: str | None = None, fallback: Path | None = None) -> str:
    """A local directory holding the model: `name_or_path` itself, or its Hub snapshot; with the Hub
    out of reach and nothing cached, `fallback` (the model as `trlm model fetch` made it), if present."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        check_model_dir(path, name_or_path)
        return str(path)
    if looks_like_path(name_or_path):
        raise TrlmError(f"model directory {name_or_path} does not exist")
    try:
        return snapshot_download(name_or_path, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():
        if fallback is not None and (fallback / "config.json").exists():
            log.warning("the Hub is unreachable and %s is not cached: using %s (trlm model fetch)", name_or_path,
                        fallback)  # fmt: skip
            return str(fallback)
        raise TrlmError(
            f"model '{name_or_path}' is not in the local Hugging Face cache and the Hub is unreachable: "
            f"download it on a connected machine (`hf download {name_or_path}`) and copy the cache into "
            f"$HF_HOME, or pass model.path=/local/dir (or run.init_from=/local/dir); "
            f"to try trlm offline, run experiment=demo"
        )
    return snapshot_download(name_or_path, revision=revision)


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


def load_model(
    source: str, tokenizer: PreTrainedTokenizerBase, hardware: HardwareConfig, new_token_init: str = "random"
) -> torch.nn.Module:
    """The causal LM at `source`, its embeddings grown to the tokenizer when tokens were added."""
    # fp32 master weights: bf16/fp16 presets train in autocast mixed precision.
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
    spec = OmegaConf.to_container(OmegaConf.structured(tiny))
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir / f"tiny_llama-{digest}"
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock"), "building the tiny demo model").hold(wait=True):
        if not (target / "config.json").exists():  # else built by another process while we waited
            build_tiny_model(tiny, target)
    return target


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
    return stage_tokenizer(AutoTokenizer.from_pretrained(source), stage)
