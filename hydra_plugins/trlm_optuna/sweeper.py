"""A Hydra sweeper on Optuna's ask/tell API: asynchronous trials, a failure budget, resumable studies.

Why not hydra-optuna-sweeper: 1.3.0 pins optuna < 3, its 1.4 line is pre-release only (and drags
hydra-core to release candidates), and both run batch-synchronously (each batch waits for its
slowest trial) without pruning. This sweeper keeps `n_jobs` trials in flight and asks for the next
as soon as any finishes, by launching batches of one from worker threads through whatever Hydra
launcher is configured (submitit_local, or submitit_slurm on a cluster).

Each trial is one training job in `outputs/<run>/sweeps/<study>/<stage>/<trial number>`: the job
reports its objective to its trial at each evaluation (pruning, trlm/callbacks.py), and returns a
`StageOutcome` (its objective, and whether it was pruned) that the launcher hands back; only the
sweeper tells a trial's final state, from that outcome or the error the job raised. It reads no
file a job wrote, and talks to Optuna through its public API (the study, the storage it opened).
Re-running the same command resumes the study: finished trials are kept, a trial whose sweeper died
is run again in its own directory (so it resumes from its last checkpoint; a job of the dead sweeper
still training there is waited for), then new trials are asked until `n_trials`. The sweeper beats
for each trial in flight (heartbeats.py), so a trial left by a sweeper on any host is found: on an RDB
by Optuna's heartbeats (re-run under a new number, in the first one's directory), on a journal by a
lease (re-run under its own number).
"""

import importlib
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.trlm_optuna.config import TrlmOptunaSweeperConf
from hydra_plugins.trlm_optuna.heartbeats import LEASE, WORKER, Heartbeats, lease_expired, owner
from hydra_plugins.trlm_submitit.launcher import what_went_wrong
from trlm import layout
from trlm.errors import Problem, Problems, TrlmError, report

log = logging.getLogger(__name__)
LOCAL_LAUNCHERS = ("BasicLauncher", "LocalLauncher")  # trials share this machine's cores


@dataclass(frozen=True)
class Ticket:
    """A trial to run: its number, its params, and the trial whose directory it uses (itself, or the first
    of its retry series)."""

    number: int
    params: dict[str, Any]
    directory: int


@dataclass
class Outcome:
    number: int
    value: float | None = None
    pruned: bool = False
    error: str | None = None


def threads_per_trial(n_jobs: int, environ: dict[str, str] | None = None) -> int:
    """Torch threads for each of `n_jobs` local trials: this process's cores split between them — its
    OMP_NUM_THREADS where set (the share a shell or a parallel test worker was given), else all cores."""
    budget = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    cores = int(budget) if budget.isdigit() and int(budget) > 0 else (os.cpu_count() or 1)
    return max(1, cores // n_jobs)


def low_end(dist: Any) -> Any:
    """A value of the distribution, for composing a sample trial."""
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


class TrlmOptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.conf = OmegaConf.create(conf)
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.exhausted = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.study_name = str(self.conf.study_name or config.run.sweep)
        with open_dict(config):  # the study names the sweep directory: one name for both
            config.run.sweep = self.study_name
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except TrlmError as error:
            raise SystemExit(report(error)) from None

    # The parts of a sweep, in order.
    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        from trlm.checks import sweeper_problems
        from trlm.study import Liveness, describe_space, is_url, open_storage, record_study, search_space, write_results

        cfg = self.config
        found = sweeper_problems(self.conf, TrlmOptunaSweeperConf)
        fixed, expressions = self.split_arguments(arguments)
        space = search_space(expressions)
        found += self.unknown_keys(space)
        self.sweep_dir = layout.sweep_dir(cfg.paths.output_root, cfg.run.name, cfg.stage.name, self.study_name)
        direction = str(self.conf.direction or cfg.stage.objective.direction.value)
        launcher_kind = type(self.launcher).__name__
        if self.conf.n_jobs > 1 and launcher_kind == "BasicLauncher":
            found.append(Problem("hydra.sweeper.n_jobs", "needs a launcher that runs trials as processes",
                                 str(self.conf.n_jobs), "add hydra/launcher=submitit_local (the sweep presets do), "
                                 "or submitit_slurm on a cluster"))  # fmt: skip
        self.space, self.fixed = space, [*fixed, *self.share_of_cores(launcher_kind)]
        if not found:  # a trial's config needs a sound sweep to compose
            found += self.preflight()
        if found:  # before the study exists: a refused sweep leaves nothing behind
            raise Problems(found)
        interval = self.conf.heartbeat_interval
        self.liveness = Liveness(interval, self.conf.grace_period or 4 * interval, self.conf.max_retry)
        storage = open_storage(self.conf.storage, self.sweep_dir, parallel=self.conf.n_jobs > 1, liveness=self.liveness)
        self.storage, self.rdb = storage, is_url(self.conf.storage)
        record_study(self.sweep_dir, self.study_name, self.conf.storage)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler(self.trials_so_far(storage)),
            pruner=optuna.pruners.NopPruner(),  # the sweeper never prunes: the jobs do, with the configured pruner
            direction=direction,
            load_if_exists=True,
        )
        self.study = study
        if self.check_compatible(study, describe_space(space), direction):
            for params in self.conf.enqueue_trials:
                study.enqueue_trial(OmegaConf.to_container(params), skip_if_exists=True)
        log.info("study %s (%s) in %s: %s", self.study_name, direction, self.sweep_dir, expressions)
        self.beats = Heartbeats(storage, interval, rdb=self.rdb)
        try:
            failures = self.run_trials()
        finally:
            self.beats.stop()
        write_results(study, self.sweep_dir)
        self.report(failures)

    def trials_so_far(self, storage: Any) -> int:
        try:
            return len(storage.get_all_trials(storage.get_study_id_from_name(self.study_name), deepcopy=False))
        except KeyError:  # a new study
            return 0

    def sampler(self, resumed_after: int = 0) -> Any:
        """The configured sampler; resuming a study of N trials, seeded seed + N: a seeded sampler would
        otherwise propose again, from its first draw, what the study's first trials already tried."""
        from hydra.utils import instantiate

        conf = OmegaConf.to_container(self.conf.sampler)
        if conf.get("_target_") == "optuna.samplers.TPESampler":
            conf.setdefault("constant_liar", True)
        if resumed_after and conf.get("seed") is not None:
            conf["seed"] += resumed_after
        return instantiate(conf)

    def split_arguments(self, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
        """Command-line overrides: fixed ones go to every trial, sweep expressions join `params`."""
        fixed, expressions = [], {key: str(value) for key, value in self.conf.params.items()}
        for override in OverridesParser.create().parse_overrides(arguments):
            if override.is_sweep_override():
                expressions[override.get_key_element()] = override.input_line.partition("=")[2]
            else:
                fixed.append(override.input_line)
        if not expressions and not self.conf.custom_search_space:
            raise TrlmError("the sweep has no search space: set hydra.sweeper.params or pass key=interval(a, b)")
        return fixed, expressions

    def unknown_keys(self, space: dict[str, Any]) -> list[Problem]:
        missing, found = object(), []
        for key in space:
            if not key.startswith("+") and OmegaConf.select(self.config, key, default=missing) is missing:
                found.append(Problem(key, "is not a setting of this config, so it cannot be swept",
                                     hint="see python train.py --cfg job"))  # fmt: skip
        return found

    def preflight(self) -> list[Problem]:
        """A trial's config, composed and planned as its job will, before any trial starts (light: no torch)."""
        from trlm.stage_plan import plan_stage

        sample = {key: dist.to_external_repr(dist.to_internal_repr(low_end(dist))) for key, dist in self.space.items()}
        try:
            trial_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, self.trial_overrides(0, sample))
        except Exception as error:  # Hydra's composition errors name the key
            raise TrlmError(f"a trial's config does not compose: {what_went_wrong(str(error))}") from None
        with open_dict(trial_cfg):
            del trial_cfg["hydra"]
        try:
            plan_stage(trial_cfg)
        except Problems as problems:
            return problems.problems
        return []

    def check_compatible(self, study: Any, space: dict[str, str], direction: str) -> bool:
        """Whether the study is new; an existing one must have the same space and direction."""
        recorded = study.user_attrs.get("search_space")
        if recorded is None:
            study.set_user_attr("search_space", space)
            return True
        if study.direction.name.lower() != direction:
            raise TrlmError(
                f"study {self.study_name} exists ({self.sweep_dir}) and {study.direction.name.lower()}s; this sweep "
                f"would {direction}: choose another hydra.sweeper.study_name"
            )
        if recorded != space:
            changed = sorted(k for k in recorded.keys() | space.keys() if recorded.get(k) != space.get(k))
            raise TrlmError(
                f"study {self.study_name} exists ({self.sweep_dir}) with another search space ({', '.join(changed)} "
                f"differ): choose another hydra.sweeper.study_name, or sweep the same space to resume it"
            )
        return False

    def share_of_cores(self, launcher_kind: str) -> list[str]:
        """Local trials share the machine: each gets cores / n_jobs torch threads unless the user chose."""
        if launcher_kind not in LOCAL_LAUNCHERS or self.config.hardware.cpu_threads is not None:
            return []
        return [f"hardware.cpu_threads={threads_per_trial(max(1, self.conf.n_jobs))}"]  # n_jobs < 1: refused

    def trial_overrides(self, number: int, params: dict[str, Any], directory: int | None = None) -> list[str]:
        from trlm.study import override_value, storage_url

        pruner = OmegaConf.to_container(self.conf.pruner) if self.conf.pruner else {}
        return [
            *self.fixed,
            *(f"{key}={override_value(value)}" for key, value in params.items()),
            f"run.sweep={self.study_name}",
            f"run.trial={number if directory is None else directory}",
            f"optuna.storage={override_value(storage_url(self.conf.storage, self.sweep_dir))}",
            f"optuna.study={override_value(self.study_name)}",
            f"optuna.number={number}",
            f"++optuna.pruner={override_value(pruner)}",  # ++: a typed dict takes new keys only so
            f"optuna.report_every={self.conf.report_every}",
        ]

    def ask(self) -> Ticket:
        from trlm.study import directory_number

        trial = self.study.ask(self.space)  # a re-queued trial (WAITING) comes first, with its params
        if self.conf.custom_search_space:
            module, _, name = str(self.conf.custom_search_space).rpartition(".")
            getattr(importlib.import_module(module), name)(self.config, trial)
        trial.set_user_attr(WORKER, owner())
        directory = directory_number(self.storage.get_trial(self.trial_id(trial.number)))
        if directory != trial.number:
            log.info("trial %d's sweeper stopped (no heartbeat for %d s): it runs again as trial %d, in its own "
                     "directory (it resumes)", directory, self.liveness.grace, trial.number)  # fmt: skip
        return Ticket(trial.number, dict(trial.params), directory)

    def reclaim(self, mine: set[int]) -> list[Ticket]:
        """Trials whose sweeper died, found by their silence. RDB: Optuna fails them and queues each again
        (asked next, under a new number). Journal: those this sweeper takes over, under their own numbers."""
        import optuna

        if self.rdb:
            optuna.storages.fail_stale_trials(self.study)
            return []
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        stale = [t for t in running if t.number not in mine and lease_expired(t.user_attrs, self.liveness.grace)]
        for trial in stale:
            log.info("trial %d was running when its sweep stopped: running it again (it resumes)", trial.number)
            self.storage.set_trial_user_attr(self.trial_id(trial.number), WORKER, owner())
        return [Ticket(t.number, dict(t.params), t.number) for t in stale]

    def others_running(self, mine: set[int]) -> list[int]:
        """RUNNING trials of another sweeper that beats for them: waited for (and reclaimed if they go silent)."""
        import optuna

        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [t.number for t in running if t.number not in mine and (self.rdb or LEASE in t.user_attrs)]

    def trial_id(self, number: int) -> int:
        from trlm.study import trial_id

        return trial_id(self.storage, self.study_name, number)

    def run_trial(self, number: int, params: dict[str, Any], directory: int | None = None) -> Outcome:
        log.info("trial %d: %s", number, params)
        try:
            overrides = self.trial_overrides(number, params, directory)
            (job,) = self.launcher.launch([overrides], initial_job_idx=number)
            value = job.return_value  # the job's StageOutcome; raises what the job raised
        except BaseException as error:  # a killed job surfaces as submitit's UncompletedJobError
            if isinstance(error, KeyboardInterrupt):
                raise
            if isinstance(error, TrlmError):  # the job's own words: every problem it found, on one line
                return Outcome(number, error="; ".join(str(error).splitlines()))
            said = str(error) if isinstance(error, CompactHydraException) else f"{type(error).__name__}: {error}"
            return Outcome(number, error=what_went_wrong(said))
        return Outcome(number, float(value), pruned=bool(getattr(value, "pruned", False)))

    def tell(self, outcome: Outcome) -> bool:
        """Records a trial's final state; returns whether it failed."""
        try:
            return self._tell(outcome)
        except RuntimeError as error:  # Grid / brute-force samplers call study.stop() once exhausted
            if "Study.stop" not in str(error):
                raise
            log.info("the sampler has tried its whole search space: no new trials")
            self.exhausted = True
            return outcome.error is not None

    def _tell(self, outcome: Outcome) -> bool:
        import optuna

        from trlm.study import finite

        state = optuna.trial.TrialState
        if outcome.error is None and not outcome.pruned and not finite(outcome.value):
            outcome.error = f"objective is {outcome.value}"
        if outcome.error is not None:
            self.storage.set_trial_user_attr(self.trial_id(outcome.number), "fail_reason", outcome.error)
            self.study.tell(outcome.number, state=state.FAIL, skip_if_finished=True)
            log.warning("trial %d failed: %s", outcome.number, outcome.error)
            return True
        if outcome.pruned:
            self.study.tell(outcome.number, state=state.PRUNED, skip_if_finished=True)
            log.info("trial %d pruned (last value %s)", outcome.number, outcome.value)
        else:
            self.study.tell(outcome.number, outcome.value, skip_if_finished=True)
            log.info("trial %d: %s = %.6g", outcome.number, self.config.stage.objective.metric, outcome.value)
        return False

    def started(self) -> int:
        """Trials started in this study, in any state (enqueued ones wait to be asked); a trial re-run under a
        new number counts once."""
        import optuna

        from trlm.study import retried_as

        trials = self.study.get_trials(deepcopy=False)
        retried = retried_as(trials)
        return sum(t.state != optuna.trial.TrialState.WAITING and t.number not in retried for t in trials)

    def run_trials(self) -> list[str]:
        """Keeps `n_jobs` trials in flight until the study holds `n_trials` (any state) or `max_failures` failed."""
        from trlm.progress import progress_counter
        from trlm.study import write_results

        pending = self.reclaim(set())
        failures: list[str] = []
        in_flight: dict[Future[Outcome], int] = {}
        waited_for: list[int] = []
        trials = progress_counter(f"sweep {self.study_name}", total=self.conf.n_trials, unit="trial")
        with ThreadPoolExecutor(max_workers=self.conf.n_jobs, thread_name_prefix="trial") as pool, trials as advance:
            advance(self.started() - len(pending))
            while True:
                pending += self.reclaim(set(in_flight.values()) | {t.number for t in pending})
                refill = self.conf.asynchronous or not in_flight
                while refill and len(in_flight) < self.conf.n_jobs and len(failures) < self.conf.max_failures:
                    if pending:
                        ticket = pending.pop(0)
                    elif not self.exhausted and self.started() < self.conf.n_trials:
                        ticket = self.ask()
                    else:
                        break
                    self.beats.add(self.trial_id(ticket.number))
                    in_flight[pool.submit(self.run_trial, ticket.number, ticket.params, ticket.directory)] = (
                        ticket.number
                    )
                if not in_flight:
                    others = self.others_running(set()) if len(failures) < self.conf.max_failures else []
                    if not others:
                        return failures
                    if others != waited_for:
                        log.info("waiting for trials %s, which another sweeper runs (re-run here if it goes silent "
                                 "for %d s)", others, self.liveness.grace)  # fmt: skip
                    waited_for = others
                    time.sleep(self.liveness.interval)
                    continue
                finished_now, _ = wait(in_flight, timeout=self.liveness.interval, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    number = in_flight.pop(future)
                    self.beats.remove(self.trial_id(number))
                    outcome = future.result()
                    if self.tell(outcome):
                        failures.append(f"trial {outcome.number}: {outcome.error}")
                    advance(1)
                if finished_now:
                    write_results(self.study, self.sweep_dir)

    def report(self, failures: list[str]) -> None:
        from trlm.study import RESULTS, best

        top = best(self.study)
        if top is not None:
            log.info("best: trial %d, %s = %.6g, %s", top.number, self.config.stage.objective.metric, top.value,
                     dict(top.params))  # fmt: skip
            log.info("saved %s and trials.csv in %s", RESULTS, self.sweep_dir)
        cut_short = not self.exhausted and self.started() < self.conf.n_trials
        if failures and not cut_short:
            log.warning("%d of the trials failed (trials.csv says why): %s", len(failures), "; ".join(failures))
        if len(failures) >= self.conf.max_failures and cut_short:
            raise TrlmError(
                f"sweep {self.study_name} stopped: {len(failures)} trials failed (hydra.sweeper.max_failures="
                f"{self.conf.max_failures}); last: {failures[-1]}. Finished trials are kept in {self.sweep_dir}"
            )
