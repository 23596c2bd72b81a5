"""Experiment tracking: W&B is configured through its environment variables, one W&B run per trlm run.

One run per stage or trial: group = experiment (a sweep's trials: experiment/study), job_type =
stage, tags = stage, blend, hardware, git and data hashes. trlm adds its resolved config and hashes
to the run's config, its final figures to the summary (`final/...`), the sampled generations as a
table. The user's environment wins where it speaks: `tracking.mode` unset means `WANDB_MODE` if set,
else online with an API key and offline without one (`wandb sync` the run directory later). Online
mode is checked when the stage is planned (a key, a reachable server), so a machine without
network fails in seconds with what to do, rather than after W&B's retries. No key is ever written:
W&B reads it from its own environment or netrc.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import socket
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trlm.config import RunConfig, TrackingConfig
from trlm.errors import Problem
from trlm.fsutil import atomic_write_text

log = logging.getLogger(__name__)
DEFAULT_SERVER = "https://api.wandb.ai"
RUN_ID = "wandb-run-id"


@dataclass(frozen=True)
class TrackingSpec:
    """Where a run's metrics go besides its directory, decided when the stage is planned."""

    report_to: tuple[str, ...]  # TRL's report_to
    project: str
    entity: str | None
    mode: str  # online | offline | disabled | shared
    mode_chosen: bool  # by the config or $WANDB_MODE (else: offline for want of an API key)
    group: str
    job_type: str
    tags: tuple[str, ...]  # besides the git and data hashes, added when they are known

    @property
    def enabled(self) -> bool:
        return "wandb" in self.report_to


def mode(setting: str | None) -> str:
    """The config's mode, else $WANDB_MODE, else online with an API key and offline without one."""
    if setting or os.environ.get("WANDB_MODE"):
        return setting or os.environ["WANDB_MODE"]
    return "online" if has_api_key(os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)) else "offline"


def tracking_spec(tracking: TrackingConfig, run: RunConfig, stage: str, data: str, hardware: str) -> TrackingSpec:
    trackers = tuple(t for t in tracking.report_to if t != "none") or ("none",)
    return TrackingSpec(
        report_to=trackers,
        project=tracking.project,
        entity=tracking.entity,
        mode=mode(tracking.mode),
        mode_chosen=bool(tracking.mode or os.environ.get("WANDB_MODE")),
        # The stages of one experiment side by side; a sweep's trials grouped by their study.
        group=f"{run.name}/{run.sweep}" if run.trial is not None else run.name,
        job_type=stage,
        tags=(stage, data, hardware, *tracking.tags),
    )


def has_api_key(server: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(server).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(server: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(server)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def problems(spec: TrackingSpec) -> list[Problem]:
    """Online W&B needs a key and a server: say so now, in one line, if either is missing."""
    if not spec.enabled or spec.mode != "online":
        return []
    server = os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)
    fix = "set tracking.mode=offline (or WANDB_MODE=offline) and `wandb sync` the run directory later"
    if not has_api_key(server):
        return [Problem("tracking", "is online but no W&B API key is set (WANDB_API_KEY or `wandb login`)", "wandb",
                        fix)]  # fmt: skip
    if not server_reachable(server):
        return [Problem("tracking", f"is online but the W&B server {server} is unreachable", "wandb", fix)]
    return []


def configure(spec: TrackingSpec, run_dir: Path, data_sha256: str = "", git_sha: str | None = None) -> None:
    """W&B's settings for this run, through its environment: TRL's W&B callback starts the run with them."""
    from trlm.distributed import is_main_process

    if not spec.enabled:
        return
    if spec.mode == "offline" and not spec.mode_chosen:
        log.info("no W&B API key: tracking offline into %s/wandb (`wandb sync` it later)", run_dir)
    tags = [*spec.tags[:3], *([f"git-{git_sha[:8]}"] if git_sha else []),
            *([f"data-{data_sha256[:8]}"] if data_sha256 else []), *spec.tags[3:]]  # fmt: skip
    settings = {
        "WANDB_DIR": str(run_dir),  # W&B's local files (offline runs too) live with the run
        "WANDB_PROJECT": spec.project,
        "WANDB_ENTITY": spec.entity,
        "WANDB_MODE": spec.mode,
        "WANDB_RUN_GROUP": spec.group,
        "WANDB_JOB_TYPE": spec.job_type,
        "WANDB_TAGS": ",".join(tag[:64] for tag in tags),  # W&B refuses tags longer than 64 characters
    }
    if is_main_process():  # the rank that reports: the same W&B run across requeues and resumes
        settings.update(WANDB_RUN_ID=run_id(run_dir), WANDB_RESUME="allow")
    os.environ.update({key: str(value) for key, value in settings.items() if value is not None})


def run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory: made once, kept in the directory, reused on resume."""
    path = run_dir / RUN_ID
    if path.exists():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet and length
    atomic_write_text(path, "".join(secrets.choice(alphabet) for _ in range(8)) + "\n")
    return path.read_text().strip()


def record_config(config: dict[str, Any], data_sha256: str, git_sha: str | None) -> None:
    """trlm's own record in the W&B run TRL's callback started: the resolved config, data and git hashes."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        record = {"trlm": config, "data_sha256": data_sha256, "git_sha": git_sha}
        wandb.run.config.update(record, allow_val_change=True)


def record_final(metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
    """The run's final figures into the W&B summary (`final/...`), its sampled generations as a W&B table."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    wandb.run.summary.update({f"final/{key}": value for key, value in metrics.items()})
    if samples:
        columns = list(samples[0])
        wandb.run.log({"eval/samples": wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])})


def finish() -> None:
    """Closes the W&B run so the next job of a multirun starts its own instead of merging into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish()
        except Exception as error:  # W&B's service gone (a killed job): the job's own outcome stands
            log.warning("W&B could not close its run (%s: %s)", type(error).__name__, error)
