"""Composing trlm's configs outside `@hydra.main`, exactly as `python train.py` composes them.

`trlm plan`, `trlm pipeline`, `trlm model fetch`, the Optuna sweeper's preflight, the lm-eval task
and the tests all compose here. A command line may name config folders of the user's own:

    trlm plan --config-dir ~/my-conf data=mine/sft stage=sft
    python train.py hydra.searchpath=[file:///shared/conf] hardware=our_cluster

Hydra adds a `--config-dir` (`-cd`) to the search path ahead of `hydra.searchpath`'s entries, all
after trlm's own `conf/`; `command_search_path` spells both as one `hydra.searchpath` override, so
a composition here finds what `@hydra.main` finds. Light: no torch, no transformers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from trlm import layout
from trlm.config import TrainConfig, describe_settings, register_configs
from trlm.errors import TrlmError
from trlm.paths import CONF_DIR

CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
MULTIRUN_FLAGS = ("-m", "--multirun")
SEARCHPATH = "hydra.searchpath"


@dataclass(frozen=True)
class Command:
    """A command line as Hydra reads it: overrides, the user's config folders, multirun or not."""

    overrides: list[str] = field(default_factory=list)
    config_dirs: list[str] = field(default_factory=list)  # absolute, in the order given
    multirun: bool = False

    @property
    def flags(self) -> list[str]:
        """The flags again, for a command that passes them on (`trlm pipeline` to each stage)."""
        return [arg for folder in self.config_dirs for arg in ("--config-dir", folder)]

    @property
    def search_path(self) -> list[str]:
        """The extra config folders, as `hydra.searchpath` entries: `--config-dir` first, then the override's."""
        given = next((o for o in self.overrides if o.split("=", 1)[0] == SEARCHPATH), None)
        listed = [str(v) for v in OverridesParser.create().parse_override(given).value()] if given else []
        return [f"file://{folder}" for folder in self.config_dirs] + listed

    @property
    def hydra_overrides(self) -> list[str]:
        """The overrides with the search path spelled once, as Hydra's compose API takes it."""
        rest = [o for o in self.overrides if o.split("=", 1)[0] != SEARCHPATH]
        path = self.search_path
        return [*rest, f"{SEARCHPATH}=[{','.join(path)}]"] if path else rest


def settings_help(*, _root_: DictConfig) -> str:
    """Every setting with its value, range and help (`python train.py --help`); `$` escaped for Hydra's template."""
    return "\n".join(describe_settings(TrainConfig, _root_)).replace("$", "$$")


def register_resolvers() -> None:
    """What conf/train.yaml interpolates (idempotent): the run layout (`${trlm.run_dir:…}`,
    `${trlm.sweep_dir:…}`, `${trlm.trial:…}`: trlm/layout.py) and `${trlm.settings:}` (the help's settings)."""
    resolvers = {
        "trlm.run_dir": lambda root, name, stage: str(layout.run_dir(root, name, stage)),
        "trlm.sweep_dir": lambda root, name, stage, sweep: str(layout.sweep_dir(root, name, stage, sweep)),
        "trlm.trial": lambda trial, override_dirname: layout.trial_name(trial, override_dirname),
        "trlm.settings": settings_help,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def split_command(args: list[str] | tuple[str, ...]) -> Command:
    """`-m`, `--config-dir DIR` / `--config-dir=DIR` / `-cd DIR` and the overrides of a command line."""
    overrides, folders, multirun = [], [], False
    items = iter(args)
    for arg in items:
        flag, _, value = arg.partition("=")
        if arg in MULTIRUN_FLAGS:
            multirun = True
        elif flag in CONFIG_DIR_FLAGS:
            folder = value or next(items, "")
            if not folder:
                raise TrlmError(f"{flag} needs a folder: {flag} DIR")
            if not os.path.isdir(folder):
                raise TrlmError(f"{flag} {folder}: no such folder (a config folder holds group folders: data/, ...)")
            folders.append(os.path.abspath(folder))
        else:
            overrides.append(arg)
    return Command(overrides, folders, multirun)


def compose(
    args: list[str] | tuple[str, ...] = (), config_name: str = "train", hydra_section: bool = False
) -> DictConfig:
    """The config `python train.py ARGS` composes (`hydra_section`: with Hydra's own, as in a job)."""
    check_choices(args)
    command = split_command(args)
    register_configs()
    register_resolvers()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=command.hydra_overrides, return_hydra_config=hydra_section)
    except TrlmError:
        raise
    except Exception as error:  # Hydra's composition errors name the key (a bad value: in the cause)
        cause = str(error.__cause__ or "").strip().splitlines()
        raise TrlmError(f"the command does not compose: {error}" + (f" ({cause[0]})" if cause else "")) from None
    if hydra_section:
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a job
    return cfg


def group_options(group: str, args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every option of a config group on the command's search path, one level of subfolders deep
    (`data`: `demo/sft`, ..., and the user's `mine/sft`); Hydra itself lists only the first level."""
    command = split_command(args)
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        search = [o for o in command.hydra_overrides if o.startswith(f"{SEARCHPATH}=")]

        def options(name: str, kind: ObjectType) -> list[str]:
            return loader.get_group_options(name, results_filter=kind, config_name="train", overrides=search)

        found = options(group, ObjectType.CONFIG)
        for sub in options(group, ObjectType.GROUP):
            found += [f"{sub}/{option}" for option in options(f"{group}/{sub}", ObjectType.CONFIG)]
    return sorted(set(found))


def check_choices(args: list[str] | tuple[str, ...]) -> None:
    """`data=nope`: the blends there are, on the command's search path (Hydra cannot list a group
    nested one level deeper, so it would only say it found none)."""
    for arg in split_command(args).overrides:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") != "data" or not value or "," in value or "(" in value:  # a sweep: Hydra checks each
            continue
        blends = group_options("data", args)
        if value not in blends:
            raise TrlmError(f"data={value} is not a blend; choose one of: {', '.join(blends)} "
                            f"(<config dir>/data/<experiment>/<stage>)")  # fmt: skip


def config_folders(args: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """trlm's `conf/` and the command's own config folders (file:// entries), in search order."""
    return [CONF_DIR, *(Path(p.removeprefix("file://")) for p in split_command(args).search_path if "://" in p)]
