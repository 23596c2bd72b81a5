"""Loading the model and tokenizer a stage starts from, and shaping them for the stage.

A start model is a local directory or a Hub id. Hub ids are resolved through the local cache
first; when they are not cached and the Hub cannot be reached, trlm says so at once instead of
letting transformers retry for a minute.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from trlm.chat_template import IM_END, THINK_TOKENS, chatml_template
from trlm.config import HardwareConfig, StageConfig, TinyModelConfig
from trlm.errors import TrlmError
from trlm.hub import hub_reachable
from trlm.paths import PROJECT_ROOT


def resolve_pretrained(name_or_path: str, revision: str | None = None) -> str:
    """A local directory holding the model: `name_or_path` itself, or its Hub snapshot."""
    if Path(name_or_path).is_dir():
        return name_or_path
    try:
        return snapshot_download(name_or_path, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():
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


def load_model(source: str, tokenizer: PreTrainedTokenizerBase, hardware: HardwareConfig) -> torch.nn.Module:
    """The causal LM at `source`, its embeddings grown to the tokenizer when tokens were added."""
    # fp32 master weights: bf16/fp16 presets train in autocast mixed precision.
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.float32, attn_implementation=hardware.attn_implementation
    )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_model_dir(tiny: TinyModelConfig, cache_dir: Path, system_prompts: list[str]) -> Path:
    """Builds (once) a tiny random-init Llama and its demo tokenizer; returns their directory."""
    spec = {"tiny": OmegaConf.to_container(OmegaConf.structured(tiny)), "system_prompts": system_prompts}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir / f"tiny_llama-{digest}"
    if (target / "config.json").exists():
        return target

    from trlm.demo.tokenizer import train_demo_tokenizer

    tokenizer = train_demo_tokenizer(tiny.vocab_size, system_prompts)
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
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def stage_system_prompts() -> list[str]:
    """The system prompts of every stage in conf/stage, which the demo tokenizer learns merges for."""
    return [OmegaConf.load(path).system_prompt for path in sorted((PROJECT_ROOT / "conf" / "stage").glob("*.yaml"))]


def load_tokenizer(source: str, stage: StageConfig) -> PreTrainedTokenizerBase:
    return stage_tokenizer(AutoTokenizer.from_pretrained(source), stage)
