"""Where a stage's start model lives: a local directory for a Hub id, a path, the fetched copy or the tiny demo model.

A start model is a local directory or a Hub id. Hub ids are resolved through the local cache
first; when they are not cached and the Hub cannot be reached, trlm says so at once instead of
letting transformers retry for a minute. A directory that claims to be a preset's model is checked
against the preset's architecture (`check_architecture`), on every run as on `trlm model fetch`.
Light at import: transformers and safetensors are imported by the functions that read weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trlm.config import ModelConfig, TinyModelConfig
from trlm.errors import TrlmError
from trlm.hub import hub_reachable
from trlm.lineage import StartPoint
from trlm.paths import project_path

log = logging.getLogger(__name__)


def looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def check_model_dir(path: Path, given: str) -> None:
    config = path / "config.json"
    if not config.exists():
        hint = f"; its finished model is {path / 'final'}" if (path / "final" / "config.json").exists() else ""
        raise TrlmError(f"{given} is not a model directory (no config.json in {path}){hint}")
    try:
        readable = isinstance(json.loads(config.read_bytes().decode("utf-8")), dict)
    except (OSError, ValueError):
        readable = False
    if not readable:
        raise TrlmError(f"{given} is not a usable model directory: {config} is not a JSON object (cut short or "
                        "overwritten?)")  # fmt: skip


def resolve_pretrained(name_or_path: str, revision: str | None = None, fallback: Path | None = None) -> str:
    """A local directory holding the model: `name_or_path` itself, or its Hub snapshot; with the Hub
    out of reach and nothing cached, `fallback` (the model as `trlm model fetch` made it), if present."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

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


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in the directory's safetensors (tied embeddings are stored once)."""
    from safetensors import safe_open

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(file, "pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118 (not iterable)
    return total


def check_architecture(model_dir: Path, architecture: dict[str, Any], preset: str) -> None:
    """The directory's config.json says it is the preset's model (and as many parameters), or a clear refusal."""
    if not architecture:
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    found = {key: getattr(config, key, None) for key in architecture if key != "parameters"}
    if "parameters" in architecture:
        found["parameters"] = parameter_count(model_dir)
    wrong = {key: (found[key], expected) for key, expected in architecture.items() if found[key] != expected}
    if wrong:
        said = ", ".join(f"{key}={have} (expected {want})" for key, (have, want) in wrong.items())
        raise TrlmError(f"{model_dir} does not hold model={preset}: its config has {said}")


def tiny_model_path(tiny: TinyModelConfig, cache_dir: Path) -> Path:
    """Where the tiny demo model of this shape is (or will be) built: one folder per shape."""
    spec = OmegaConf.to_container(OmegaConf.structured(tiny))
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"tiny_llama-{digest}"


def pretrained_dir(model: ModelConfig, start: StartPoint) -> str:
    """A local directory for a start point that is no tiny demo model (trlm/modeling.py builds that)."""
    if start.kind != "base":
        return resolve_pretrained(start.source)
    package = model.package
    fallback = project_path(package.directory) if package is not None else None
    if package is not None and start.source == package.directory:  # the fetched copy itself
        if not (fallback / "config.json").exists():
            raise TrlmError(f"model={model.name} is not fetched yet: run `trlm model fetch {package.alias}` once")
        source = str(fallback)
    else:
        source = resolve_pretrained(start.source, model.revision, fallback)
    check_architecture(Path(source), dict(model.architecture), model.name)
    return source
