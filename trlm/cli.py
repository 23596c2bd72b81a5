"""Command-line doors: `python train.py` / `trlm train`, `trlm prepare` (Hydra), `trlm results DIR`.

This module stays light (no torch / TRL import) so that config errors come back at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from trlm.config import register_configs
from trlm.errors import TrlmError
from trlm.paths import CONF_DIR

register_configs()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> float:
    """The Hydra task function: runs one stage, returns its objective."""
    from trlm.run import run_stage  # heavy (torch, transformers, TRL): only once the config composed

    if int(os.environ.get("RANK", "0")) != 0:  # one voice per job: other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)

    try:
        return run_stage(cfg, Path(HydraConfig.get().runtime.output_dir))
    except TrlmError as error:
        print(f"trlm: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def prepare(cfg: DictConfig) -> None:
    """Prepares a blend (or finds it prepared), prints where it is, optionally pushes it."""
    from trlm.data.card import push_to_hub
    from trlm.data.prepare import prepare_blend
    from trlm.paths import project_path

    try:
        prepared = prepare_blend(cfg.data, project_path(cfg.paths.blends_dir), rebuild=cfg.rebuild)
        meta = prepared.metadata
        print(f"{meta['name']}: {meta['total_entries']} rows in {prepared.path} (sha256 {meta['content_sha256']})")
        if cfg.push_to_hub:
            print(f"pushed to {push_to_hub(prepared.path, cfg.data.name, cfg.private)}")
    except TrlmError as error:
        print(f"trlm: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


USAGE = """usage: trlm train [key=value ...]     run a stage (same as `python train.py`)
       trlm prepare data=<blend> [...]  prepare a blend (conf/data/<experiment>/<stage>), e.g. data=report/sft
       trlm results DIR               the summary table of an experiment's stages (e.g. outputs/demo)"""


def main() -> None:
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command in ("train", "prepare"):
        sys.argv = [f"{sys.argv[0]} {command}", *rest]
        train() if command == "train" else prepare()
    elif command == "results" and len(rest) == 1:
        from trlm.results import print_results

        raise SystemExit(print_results(Path(rest[0])))
    else:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
