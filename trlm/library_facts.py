"""What TRL and transformers accept, for the config checks of commands that do not import them.

The checks validate a stage against the libraries themselves: the fields of TRL's config class for
its trainer kind, the loss types TRL's field metadata lists, transformers' scheduler names and
attention implementations. Importing TRL takes seconds (torch, transformers), which `trlm plan`,
the sweeper's preflight or a refused command should not pay. So the facts are read once per
installed version pair, in a child interpreter (`python -m trlm.library_facts`), and kept in a small
JSON file; a process that has imported TRL already reads them directly.

    $TRLM_CACHE_DIR (else $XDG_CACHE_HOME/trlm, else ~/.cache/trlm)/library-facts-<key>.json

The key covers the TRL and transformers versions and the trainer table, so an upgrade or a new
trainer kind reads them afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_text
from trlm.trainer_kinds import TRAINERS

LIBRARIES = ("trl", "transformers")


@dataclass(frozen=True)
class LibraryFacts:
    config_fields: dict[str, frozenset[str]]  # trainer kind -> its TRL config's fields
    loss_types: dict[str, tuple[str, ...]]  # trainer kind -> allowed `loss_type` values
    schedulers: tuple[str, ...]  # transformers' SchedulerType values
    attention: tuple[str, ...]  # transformers' attention implementations (besides eager)


def load_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def loss_types_of(config_class: type) -> tuple[str, ...]:
    """`loss_type`'s allowed values from TRL's field metadata: its `choices`, else the names its help lists
    (`'x'` in backticks, or quoted in its "Supported values are ..." sentence)."""
    metadata = next(f.metadata for f in dataclasses.fields(config_class) if f.name == "loss_type")
    if "choices" in metadata:
        return tuple(metadata["choices"])
    said = metadata.get("help", "")
    named = re.findall(r"`'(\w+)'`", said)
    if not named and (listing := re.search(r"(?:Supported|Possible) values are ([^.]*)\.", said)):
        named = re.findall(r"'(\w+)'", listing[1])
    return tuple(dict.fromkeys(named))


def read_facts() -> dict:
    """The facts, read from the imported libraries (JSON-ready)."""
    from transformers import SchedulerType
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    classes = {kind.value: load_class(spec.config_class) for kind, spec in TRAINERS.items()}
    return {
        "config_fields": {kind: sorted(f.name for f in dataclasses.fields(cls)) for kind, cls in classes.items()},
        "loss_types": {kind: list(loss_types_of(cls)) for kind, cls in classes.items()},
        "schedulers": [s.value for s in SchedulerType],
        "attention": sorted(ALL_ATTENTION_FUNCTIONS.valid_keys()),
    }


def cache_dir() -> Path:
    if os.environ.get("TRLM_CACHE_DIR"):
        return Path(os.environ["TRLM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trlm"


def cache_key() -> str:
    versions = {name: importlib.metadata.version(name) for name in LIBRARIES}
    table = {kind.value: (spec.config_class, spec.trainer_class) for kind, spec in TRAINERS.items()}
    return hashlib.sha256(json.dumps([versions, table], sort_keys=True).encode()).hexdigest()[:16]


def from_child() -> dict:
    result = subprocess.run([sys.executable, "-m", "trlm.library_facts"], capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrlmError(f"could not read TRL's and transformers' settings ({said}): is trlm installed (make setup)?")
    return json.loads(result.stdout)


@functools.cache
def library_facts() -> LibraryFacts:
    if "trl" in sys.modules:  # already paid for: read them here
        raw = read_facts()
    else:
        path = cache_dir() / f"library-facts-{cache_key()}.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            raw = from_child()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(raw))
            except OSError:  # a read-only home: read them again next time
                pass
    return LibraryFacts(
        config_fields={kind: frozenset(names) for kind, names in raw["config_fields"].items()},
        loss_types={kind: tuple(values) for kind, values in raw["loss_types"].items()},
        schedulers=tuple(raw["schedulers"]),
        attention=tuple(raw["attention"]),
    )


if __name__ == "__main__":
    print(json.dumps(read_facts()))
