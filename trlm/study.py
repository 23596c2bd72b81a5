"""Optuna studies as trlm uses them: storage, search spaces in Hydra's override grammar, results.

Shared by the sweeper (hydra_plugins/trlm_optuna), the training job that reports to its trial
(pruning), and `trlm sweep DIR`. Light at import: optuna is imported where it is needed.

- Storage: Optuna's journal file in the sweep directory by default (safe for many processes, also
  on NFS, with the open lock); an RDB URL is accepted; plain SQLite is refused for parallel trials.
- Search space: `key: "interval(1e-5, 1e-3)"`, `"tag(log, interval(…))"`, `"tag(int, interval(…))"`,
  `"choice(a, b)"`, `"range(1, 5)"` — Hydra's own sweep grammar, turned into Optuna distributions.
- The pruner is not stored with a study, so the sweeper passes its config to every job, which
  rebuilds it before loading its trial.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_text

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)
JOURNAL = "optuna.journal"
STUDY = "study.yaml"  # the sweep's study name and storage: every reader opens what the sweeper wrote to
RESULTS, TRIALS = "optimization_results.yaml", "trials.csv"


def is_url(storage: str | None) -> bool:
    return bool(storage) and "://" in storage


def journal_path(storage: str | None, sweep_dir: Path | None) -> Path:
    """The journal file: the given path, else the one in the sweep directory."""
    return Path(storage) if storage else sweep_dir / JOURNAL


@dataclass(frozen=True)
class Liveness:
    """How a sweeper shows its trials in flight are alive: a heartbeat every `interval` s; one silent for
    `grace` s is dead and is run again (at most `max_retry` times on an RDB, where Optuna gives it a new number)."""

    interval: int
    grace: int
    max_retry: int


def open_storage(storage: str | None, sweep_dir: Path | None, parallel: bool, liveness: Liveness | None = None) -> Any:
    """The study's storage: a journal file (default: in the sweep dir) or an RDB URL. With `liveness`, an RDB
    keeps Optuna's heartbeats and re-queues a trial whose heartbeat stopped (the journal gets a lease instead,
    kept by the sweeper: Optuna keeps heartbeats in RDB storage only)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if is_url(storage):
        if storage.startswith("sqlite") and parallel:
            raise TrlmError(
                f"storage {storage}: SQLite locks up under parallel writers (Optuna's FAQ); use the default "
                f"journal file (leave hydra.sweeper.storage unset) or a server database URL"
            )
        return open_rdb(storage, liveness)
    path = journal_path(storage, sweep_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as error:
        raise TrlmError(f"cannot write the study's journal {path} ({error.filename}: {error.strerror})") from None
    repair_journal(path)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def open_rdb(url: str, liveness: Liveness | None) -> Any:
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
    # Optuna beats from Study.optimize; trlm's sweeper asks and tells, and beats itself (heartbeats.py)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    beats = {}
    if liveness is not None:
        retry = RetryHeartbeatStaleTrialCallback(max_retry=liveness.max_retry, inherit_intermediate_values=True)
        beats = dict(heartbeat_interval=liveness.interval, grace_period=liveness.grace,
                     heartbeat_stale_trial_callback=retry)  # fmt: skip
    try:  # pre-ping: a server drops connections idle for hours (MySQL's wait_timeout) while a trial trains
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beats)
    except ImportError as error:
        raise TrlmError(
            f"storage {url.split('://')[0]}://…: its database driver is missing ({error}); for MySQL / "
            f"MariaDB: pip install -e '.[rdb]'"
        ) from None
    except Exception as error:  # SQLAlchemy's OperationalError: the server refused or is not there
        said = str(error).splitlines()[0]
        raise TrlmError(f"cannot open the study's database {redact(url)}: {said}") from None


def redact(url: str) -> str:
    """An RDB URL without its password, for messages."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.partition(':')[0]}:***@{host}" if at and ":" in credentials else url


TAIL_BYTES = 1 << 20  # a journal record is far shorter: its last one lies in the file's last MiB


def repair_journal(path: Path) -> Path | None:
    """A journal whose last record was cut short (a crash or a full disk mid-write) is repaired: the file is
    kept aside, the torn record cut off, and the study reads on. Under the journal's own lock, so a record
    being written right now is never taken for a torn one. Returns where the torn journal was kept."""
    from optuna.storages.journal import JournalFileOpenLock

    if path.stat().st_size == 0:
        return None
    lock = JournalFileOpenLock(str(path))
    lock.acquire()
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
        body = tail[:-1] if tail.endswith(b"\n") else tail
        start = body.rfind(b"\n") + 1
        if tail.endswith(b"\n"):
            try:
                json.loads(body[start:])
                return None  # the last record is whole
            except ValueError:
                pass
        cut = size - len(tail) + start
        aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        shutil.copyfile(path, aside)
        with path.open("r+b") as handle:
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        lock.release()
    log.warning("the study's journal %s ended in a record cut short (a crash or a full disk mid-write): the "
                "journal is kept as %s, the torn record cut off; the study goes on", path, aside)  # fmt: skip
    return aside


def record_study(sweep_dir: Path, study: str, storage: str | None) -> None:
    """`study.yaml` in the sweep directory: which study, in which storage (a journal path or an RDB URL, as
    every trial's overrides already hold it), for `trlm sweep`, `trlm compare` and the dashboard."""
    record = {"study": study, "storage": storage_url(storage, sweep_dir)}
    sweep_dir.mkdir(parents=True, exist_ok=True)  # an RDB study: nothing else wrote here yet
    atomic_write_text(sweep_dir / STUDY, OmegaConf.to_yaml(OmegaConf.create(record)))


def sweep_storage(sweep_dir: Path) -> tuple[Any, list[str]]:
    """The storage a sweep directory's study lives in, and the names of its studies there (an RDB holds others)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record = sweep_dir / STUDY
    if record.is_file():
        recorded = OmegaConf.load(record)
        where = str(recorded.storage)
        if not is_url(where) and not Path(where).is_file() and (sweep_dir / JOURNAL).is_file():
            where = str(sweep_dir / JOURNAL)  # the outputs were moved: the journal beside the record
        return open_storage(where, sweep_dir, parallel=False), [str(recorded.study)]
    if not (sweep_dir / JOURNAL).is_file():
        raise TrlmError(f"{sweep_dir} holds no study (neither {STUDY} nor {JOURNAL})")
    storage = open_storage(str(sweep_dir / JOURNAL), sweep_dir, parallel=False)
    return storage, [s.study_name for s in optuna.study.get_all_study_summaries(storage)]


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """What a job is told to open: the RDB URL, or the journal file's path."""
    return storage if is_url(storage) else str(journal_path(storage, sweep_dir))


def distribution(key: str, expression: str) -> BaseDistribution:
    """An Optuna distribution from a Hydra sweep expression (`interval`, `tag(log, …)`, `choice`, `range`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    try:
        override = OverridesParser.create().parse_override(f"{key}={expression}")
    except Exception as error:  # Hydra's parser raises its own OverrideParseException with the grammar's words
        raise TrlmError(f"search space {key}={expression!r} is not a Hydra sweep expression: {error}") from None
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), step=int(sweep.step))
        return CategoricalDistribution(values)
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        if "int" in sweep.tags:  # Hydra's interval is float; tag(int, interval(a, b)) as hydra-optuna-sweeper
            return IntDistribution(int(sweep.start), int(sweep.end), log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise TrlmError(
        f"search space {key}={expression!r}: use interval(a, b), tag(log, interval(a, b)), choice(…) or range(…)"
    )


def search_space(params: dict[str, str]) -> dict[str, BaseDistribution]:
    return {key: distribution(key, str(expression)) for key, expression in params.items()}


def describe_space(space: dict[str, BaseDistribution]) -> dict[str, str]:
    from optuna.distributions import distribution_to_json

    return {key: distribution_to_json(dist) for key, dist in sorted(space.items())}


def override_value(value: Any) -> str:
    """A value in Hydra's override grammar (strings quoted, dicts and lists spelled out)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def build_pruner(config: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    """The sweeper's pruner, rebuilt from its config (Optuna does not store it with the study)."""
    import optuna
    from hydra.utils import instantiate

    if not config:
        return optuna.pruners.NopPruner()
    return instantiate(OmegaConf.create(dict(config)))


@dataclass(frozen=True)
class TrialLink:
    """This run is trial `number` of an Optuna study: it reports its objective there as it trains."""

    storage: str  # journal file or RDB URL
    study: str
    number: int
    pruner: dict[str, Any]  # Optuna does not store the pruner with the study: the job rebuilds it
    report_every: float  # evaluate and report every N steps (< 1: that share of the run)
    metric: str


def trial_id(storage: Any, study: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), number)


class TrialChannel:
    """A training job's side of its trial, through Optuna's public storage and pruner APIs: report an
    intermediate value (once per step: a resumed job does not report a step twice), ask the pruner."""

    def __init__(self, link: TrialLink) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = open_storage(link.storage, None, parallel=True)
        self.study = optuna.load_study(study_name=link.study, storage=self.storage, pruner=build_pruner(link.pruner))
        self.trial_id = trial_id(self.storage, link.study, link.number)
        self.ended = False

    def report(self, step: int, value: float) -> bool:
        """Records `value` at `step` (unless that step is recorded already); whether to prune now. A trial its
        sweeper has ended (its sweeper died and the trial was re-queued) takes no reports: the job trains on,
        and its re-run, waiting for this run's directory, reads the result."""
        import optuna

        trial = self.storage.get_trial(self.trial_id)
        if trial.state.is_finished():
            if not self.ended:
                log.warning("trial %d was ended by its sweeper (%s): training on without reports, for its re-run",
                            trial.number, trial.state.name.lower())  # fmt: skip
            self.ended = True
            return False
        if step not in trial.intermediate_values:
            try:
                self.storage.set_trial_intermediate_value(self.trial_id, step, value)
            except optuna.exceptions.UpdateFinishedTrialError:  # ended between the two calls
                return self.report(step, value)
            trial = self.storage.get_trial(self.trial_id)
        return self.study.pruner.prune(self.study, trial)


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    reason: str = ""


def retried_as(trials: list[optuna.trial.FrozenTrial]) -> dict[int, int]:
    """Trial number -> the number of the trial that re-ran it (Optuna's retry of a trial whose heartbeat stopped)."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}


def directory_number(trial: optuna.trial.FrozenTrial) -> int:
    """The trial whose directory (and checkpoints, W&B run) a trial uses: the first of its retry series."""
    history = trial.system_attrs.get("retry_history")
    return history[0] if history else trial.number


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    trials = study.get_trials(deepcopy=False)
    retries = retried_as(trials)
    return [
        TrialRow(t.number, t.state.name, t.value, dict(t.params),
                 str(t.user_attrs.get("fail_reason", "")) or (f"its sweeper stopped: run again as trial "
                                                              f"{retries[t.number]}" if t.number in retries else ""))
        for t in trials
    ]  # fmt: skip


def best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return study.best_trial if done else None


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """`optimization_results.yaml` (as hydra-optuna-sweeper writes it) and `trials.csv` beside it."""
    rows = trial_rows(study)
    keys = sorted({key for row in rows for key in row.params})
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["number", "state", "value", *keys, "reason"])
    for row in rows:
        writer.writerow([row.number, row.state, "" if row.value is None else row.value,
                         *(row.params.get(k, "") for k in keys), row.reason])  # fmt: skip
    atomic_write_text(sweep_dir / TRIALS, table.getvalue())
    top = best(study)
    if top is not None:
        results = {"name": "optuna", "best_params": dict(top.params), "best_value": top.value}
        atomic_write_text(sweep_dir / RESULTS, OmegaConf.to_yaml(OmegaConf.create(results)))


def format_study(study: optuna.Study) -> str:
    rows = trial_rows(study)
    keys = sorted({key for row in rows for key in row.params})
    lines = [["trial", "state", "value", *keys]]
    for row in rows:
        value = "-" if row.value is None else f"{row.value:.4g}"
        lines.append([str(row.number), row.state.lower(), value, *(str(row.params.get(k, "-")) for k in keys)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    direction = study.direction.name.lower()
    top = best(study)
    summary = f"best: trial {top.number}, value {top.value:.4g}, {dict(top.params)}" if top else "best: none yet"
    return f"study {study.study_name} ({direction}, {len(rows)} trials)\n{text}\n{summary}"


def print_study(sweep_dir: Path) -> int:
    """`trlm sweep DIR`: the study in DIR's storage, at any time (also while it runs)."""
    import optuna

    storage, names = sweep_storage(sweep_dir)
    for name in names:
        print(format_study(optuna.load_study(study_name=name, storage=storage)))
    return 0
