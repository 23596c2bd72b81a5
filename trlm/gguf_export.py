"""`trlm export gguf <run | model dir>`: the trained model as one GGUF file, for llama.cpp-style runtimes.

The report's case for a 135M reasoner is on-device use; GGUF is the file those runtimes (llama.cpp,
Ollama, LM Studio) load, and the very format trlm reads SmolLM2 from (`trlm model fetch`). The file
is written with the `gguf` package alone (its writer, tensor-name map and numpy quantisers; no
compiled toolchain): llama.cpp's `llama` architecture, the weights in f32, f16, q8_0 or q4_0 (norms
stay f32, as llama.cpp keeps them), the byte-level BPE tokenizer with its added tokens (`<think>`,
`</think>` and ChatML's marked as control tokens) and the model's chat template. Q and K projections
are permuted to llama.cpp's rotary layout, as its own converter does; transformers' GGUF reader
undoes that on load, which is how the round trip is checked (`verify_gguf`): the file loads back
through transformers and answers like the model it came from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_with, disk_space
from trlm.progress import progress

log = logging.getLogger(__name__)
TYPES = ("f32", "f16", "q8_0", "q4_0")
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}  # llama.cpp's LlamaFileType
# What the round trip must show, per type: (the least share of reply positions where the file picks the
# model's next token, the largest logit gap relative to the model's largest logit). f16 rounds each
# weight to 11 significant bits, q8_0 to 8 (a scale per block of 32), q4_0 to 4. Measured on
# SmolLM2-135M-Instruct (docs/shipping.md): f16 100% / 0.00%, q8_0 97.3% / 3.6%, q4_0 72.6% / 53%
# (its weights were 4-bit already: quantised twice); the bounds leave room above those.
TOLERANCE = {"f32": (1.0, 0.001), "f16": (1.0, 0.01), "q8_0": (0.95, 0.08), "q4_0": (0.6, 0.75)}
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}]}


@dataclass(frozen=True)
class Exported:
    path: Path
    kind: str
    tensors: int
    size: int


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for a Q or K projection (its converter's `LlamaModel.permute`)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def tokenizer_pre(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer: SmolLM2's (digits one by one, then GPT-2's bytes) or the default."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [])
    if steps and steps[0].get("type") == "Digits" and steps[0].get("individual_digits"):
        return "smollm"
    return "default"


def add_tokenizer(writer: Any, model_dir: Path) -> None:
    """The byte-level BPE vocabulary, its merges, token types (added special tokens as control tokens, so that
    `<|im_start|>` or `<think>` stay one token), special token ids and the chat template."""
    import gguf

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise TrlmError(f"{model_dir}: only byte-level BPE tokenizers are exported to GGUF (this one is "
                        f"{model.get('type')})")  # fmt: skip
    vocab = dict(model["vocab"])
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    for token_id, token in added.items():
        vocab.setdefault(token["content"], token_id)
    by_id = {token_id: text for text, token_id in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise TrlmError(f"{model_dir}: the tokenizer's ids are not 0..{len(by_id) - 1}: it cannot be exported")
    types = [gguf.TokenType.CONTROL if added.get(i, {}).get("special") else gguf.TokenType.USER_DEFINED
             if i in added else gguf.TokenType.NORMAL for i in range(len(by_id))]  # fmt: skip
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(spec))
    writer.add_token_list([by_id[i] for i in range(len(by_id))])
    writer.add_token_types([int(t) for t in types])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_token_merges(merges)
    config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    for kind in ("bos", "eos", "unk", "pad"):
        token = config.get(f"{kind}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token in vocab:
            getattr(writer, f"add_{kind}_token_id")(vocab[token])
    template = model_dir / "chat_template.jinja"
    if template.exists():
        writer.add_chat_template(template.read_text(encoding="utf-8"))
    elif config.get("chat_template"):
        writer.add_chat_template(config["chat_template"])


def tensor_for(name: str, tensor: np.ndarray, kind: str) -> tuple[np.ndarray, Any]:
    """The tensor as the file stores it: norms and other 1-D tensors in f32, matrices in the file's type."""
    import gguf

    if tensor.ndim == 1 or kind == "f32":
        return tensor.astype(np.float32), gguf.GGMLQuantizationType.F32
    if kind == "f16":
        return tensor.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if tensor.shape[-1] % block:  # rows that do not split into blocks: kept at f16
        log.info("%s: rows of %d do not split into blocks of %d: kept at f16", name, tensor.shape[-1], block)
        return tensor.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(tensor.astype(np.float32), qtype), qtype


def export_gguf(model_dir: Path, out: Path, kind: str = "f16") -> Exported:
    """Writes the model directory's model and tokenizer as one GGUF file (whole or not at all)."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig

    if kind not in TYPES:
        raise TrlmError(f"--type {kind}: choose one of {', '.join(TYPES)}")
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llama":
        raise TrlmError(f"{model_dir} holds a {config.model_type} model; trlm exports Llama-shaped models (SmolLM2)")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise TrlmError(f"{model_dir} holds no safetensors weights")

    def write(staging: Path) -> int:
        writer = gguf.GGUFWriter(str(staging), "llama")
        writer.add_name(config.name_or_path or model_dir.name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // heads)
        writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None)
                                        else config.rope_theta))  # fmt: skip
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(FILE_TYPES[kind])
        add_tokenizer(writer, model_dir)
        count = 0
        for file in weights:
            with safe_open(file, "pt") as stored:
                keys = list(stored.keys())
                for key in progress(keys, f"writing {kind} tensors", unit="tensor"):
                    tensor = stored.get_tensor(key).float().numpy()
                    if key.endswith("q_proj.weight"):
                        tensor = permute(tensor, heads)
                    elif key.endswith("k_proj.weight"):
                        tensor = permute(tensor, kv_heads)
                    name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                    if name is None:
                        raise TrlmError(f"{key} has no GGUF name in the llama architecture: not exported")
                    data, qtype = tensor_for(name, tensor, kind)
                    writer.add_tensor(name, data, raw_dtype=qtype)
                    count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return count

    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = 0

    def write_counting(staging: Path) -> None:
        nonlocal tensors
        tensors = write(staging)

    with disk_space(out.parent, f"writing {out.name}"):
        atomic_write_with(out, write_counting)
    return Exported(out, kind, tensors, out.stat().st_size)


@dataclass(frozen=True)
class RoundTrip:
    """How the file answers next to the model it came from, on the check's prompts."""

    kind: str
    prompts: int
    same_replies: int  # greedy replies, generated by each, that are the same text
    top1_agreement: float  # share of reply positions where both pick the same next token (teacher-forced)
    max_logit_gap: float  # the largest |logit difference| there, relative to the model's largest |logit|

    @property
    def ok(self) -> bool:
        """f32/f16: the same greedy replies; quantised: the same next token almost everywhere, logits close."""
        floor, gap = TOLERANCE[self.kind]
        exact = self.kind in ("f32", "f16")
        return (self.same_replies == self.prompts or not exact) and self.top1_agreement >= floor and (
            self.max_logit_gap <= gap)  # fmt: skip

    def __str__(self) -> str:
        floor, gap = TOLERANCE[self.kind]
        return (f"{self.same_replies}/{self.prompts} greedy replies the same, the same next token at "
                f"{self.top1_agreement:.1%} of reply positions (>= {floor:.0%}), largest logit gap "
                f"{self.max_logit_gap:.2%} of the largest logit (<= {gap:.0%})")  # fmt: skip


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]  # fmt: skip


def verify_gguf(gguf_file: Path, model_dir: Path, kind: str, prompts: list[str], max_new_tokens: int = 24) -> RoundTrip:
    """Loads the file back through transformers' GGUF reader (as `trlm model fetch` reads SmolLM2's) and
    compares it with the model directory on `prompts`: each one's greedy reply, then, along the model's
    own reply, the next token each would pick and their logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trlm.chat_template import cut_at_turn_end, turn_end_ids

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    loaded.eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    same, agreed, positions, gap = 0, 0, 0, 0.0

    def reply(model, tok, prompt_ids):
        out = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=turn_end_ids(tok), pad_token_id=tok.pad_token_id)  # fmt: skip
        return out, cut_at_turn_end(tok.decode(out[0, prompt_ids.shape[1] :], skip_special_tokens=False))

    for prompt in progress(prompts, f"checking {gguf_file.name} against {model_dir.name}", unit="prompt"):
        messages = [{"role": "user", "content": prompt}]
        ids, ids_back = (chat_ids(t, messages) for t in (tokenizer, loaded_tokenizer))
        with torch.no_grad():
            full, text = reply(reference, tokenizer, ids)
            _, text_back = reply(loaded, loaded_tokenizer, ids_back)
            same += text == text_back
            ours, theirs = reference(full).logits[0, ids.shape[1] - 1 :], loaded(full).logits[0, ids.shape[1] - 1 :]
            agreed += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            positions += ours.shape[0]
            gap = max(gap, float((ours - theirs).abs().max() / ours.abs().max()))
    return RoundTrip(kind, len(prompts), same, agreed / max(positions, 1), gap)


def model_dir_of(given: Path) -> Path:
    """A model directory, or a finished run's final/."""
    from trlm.run_dir import FINAL

    for candidate in (given, given / FINAL):
        if (candidate / "config.json").exists() and list(candidate.glob("*.safetensors")):
            return candidate
    raise TrlmError(f"{given} is neither a model directory nor a finished run (no {given / FINAL}/config.json)")


DEFAULT_PROMPTS = ("What is 12 + 30?", "What is 7 + 8 + 5?", "Hello! Who are you?")


def export_command(args: list[str]) -> int:
    """`trlm export gguf <run | model dir> [--type f16|q8_0|q4_0|f32] [--out FILE] [--no-check]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="trlm export", description="write a trained model as a GGUF file")
    parser.add_argument("format", choices=["gguf"], help="the file format (gguf)")
    parser.add_argument("model", help="a finished run directory (its final/) or a model directory")
    parser.add_argument("--type", default="f16", choices=TYPES, help="the tensors' type (default f16)")
    parser.add_argument("--out", help="the file to write (default: <run>/export/model-<type>.gguf)")
    parser.add_argument("--no-check", action="store_true", help="skip the round trip through transformers")
    options = parser.parse_args(args)
    from trlm.paths import project_path

    given = project_path(options.model)
    model_dir = model_dir_of(given)
    home = given if model_dir != given else model_dir.parent
    out = project_path(options.out) if options.out else home / "export" / f"model-{options.type}.gguf"
    exported = export_gguf(model_dir, out, options.type)
    print(f"wrote {exported.path} ({exported.tensors} tensors, {exported.size / 2**20:.1f} MiB, {exported.kind})")
    if not options.no_check:
        check = verify_gguf(exported.path, model_dir, options.type, list(DEFAULT_PROMPTS))
        said = f"round trip through transformers: {check}"
        if not check.ok:
            raise TrlmError(f"{exported.path} does not answer like {model_dir}: {said}")
        print(said)
    return 0
