"""A study that survives its sweeper, on any host: heartbeats on an RDB (the local cluster's MariaDB),
leases on a journal; and the dashboard that serves either."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import optuna
import pytest
from omegaconf import OmegaConf

from hydra_plugins.trlm_optuna.heartbeats import LEASE, WORKER, lease_expired, owner
from trlm.paths import PROJECT_ROOT
from trlm.records import Summary
from trlm.study import STUDY, TRIALS, directory_number, open_storage, record_study, redact

MARIADB = "mysql+pymysql://trlm:trlm@127.0.0.1:13306/trlm_optuna"  # scripts/slurm/up.sh creates it


def mariadb_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 13306), timeout=1):
            return True
    except OSError:
        return False


def can_claim_another_hostname() -> bool:
    """`unshare -u` (a UTS namespace of its own: root, or CAP_SYS_ADMIN) lets a process claim another hostname."""
    try:
        return subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


requires_mariadb = pytest.mark.skipif(
    not mariadb_answers(), reason="the local cluster's MariaDB is down (make slurm-up)"
)


def test_a_trials_lease_expires_with_its_sweeper():
    me, other = owner(), "elsewhere:123"
    assert not lease_expired({WORKER: me}, grace=1)  # this host, alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert lease_expired({WORKER: f"{socket.gethostname()}:{dead.pid}"}, grace=1)  # this host, gone: at once
    now = time.time()
    assert not lease_expired({WORKER: other, LEASE: now - 5}, grace=10, now=now)  # another host, beating
    assert lease_expired({WORKER: other, LEASE: now - 50}, grace=10, now=now)  # another host, silent
    assert not lease_expired({WORKER: other}, grace=10, now=now)  # no lease (an older sweeper): its owner's


def journal_sweeper(tmp_path):
    from hydra_plugins.trlm_optuna.config import TrlmOptunaSweeperConf
    from hydra_plugins.trlm_optuna.sweeper import TrlmOptunaSweeper
    from trlm.study import Liveness

    sweeper = TrlmOptunaSweeper(**OmegaConf.to_container(OmegaConf.structured(TrlmOptunaSweeperConf)))
    sweeper.study_name, sweeper.rdb, sweeper.liveness = "s", False, Liveness(1, 10, 3)
    sweeper.storage = open_storage(None, tmp_path, parallel=True)
    sweeper.study = optuna.create_study(study_name="s", storage=sweeper.storage)
    return sweeper


def test_a_journal_trial_another_host_left_is_rerun_when_its_lease_runs_out(tmp_path):
    sweeper = journal_sweeper(tmp_path)
    beating, silent = sweeper.study.ask(), sweeper.study.ask()
    for trial, age in ((beating, 2), (silent, 60)):
        trial.set_user_attr(WORKER, "elsewhere:1")
        trial.set_user_attr(LEASE, time.time() - age)
    tickets = sweeper.reclaim(mine=set())
    assert [(t.number, t.directory) for t in tickets] == [(silent.number, silent.number)]  # its own number
    assert sweeper.study.trials[silent.number].user_attrs[WORKER] == owner()  # taken over
    assert sweeper.others_running({silent.number}) == [beating.number]  # waited for, not re-run


def test_an_rdb_url_is_shown_without_its_password():
    assert redact("mysql+pymysql://trlm:secret@db:3306/x") == "mysql+pymysql://trlm:***@db:3306/x"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def test_an_unreachable_database_is_one_line():
    from trlm.errors import TrlmError

    with pytest.raises(TrlmError, match=r"cannot open the study's database mysql\+pymysql://u:\*\*\*@127.0.0.1:9/x"):
        open_storage("mysql+pymysql://u:p@127.0.0.1:9/x", None, parallel=True)


FAST = ("experiment=demo", "stage=sft", "stage.evaluation.generate=false", "sweep=lr", "hydra.sweeper.pruner=null",
        "stage.recipe.max_steps=100", "stage.recipe.save_steps=4", "stage.recipe.logging_steps=1",
        "hydra.sweeper.report_every=2", "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2")  # fmt: skip


@pytest.mark.slow
@requires_mariadb
@pytest.mark.skipif(not can_claim_another_hostname(), reason="unshare -u needs root (a hostname of its own)")
def test_an_rdb_sweep_survives_its_sweeper_killed_and_restarted_on_another_host(tmp_path):
    study = f"trlm_test_{uuid.uuid4().hex[:8]}"
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", f"paths.output_root={tmp_path / 'outputs'}",
               *FAST, "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={MARIADB}",
               f"hydra.sweeper.study_name={study}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / study / "sft"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((sweep / "0" / "checkpoints").glob("checkpoint-*/trlm_complete")) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)  # the sweeper only: its trial's job trains on, an orphan
    first.wait()
    time.sleep(3)  # past the grace period: the restarted sweeper re-runs trial 0 first, while its orphan trains
    storage = open_storage(MARIADB, None, parallel=True)
    try:
        restart = subprocess.run(["unshare", "-u", "sh", "-c", 'hostname other-host && exec "$@"', "sh", *command],
                                 env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert restart.returncode == 0, restart.stderr[-3000:]
        assert "sweeper stopped (no heartbeat for 2 s): it runs again as trial" in restart.stdout + restart.stderr
        trials = optuna.load_study(study_name=study, storage=storage).trials
        done = [t for t in trials if t.state.name == "COMPLETE"]
        (failed,) = [t for t in trials if t.state.name == "FAIL"]
        assert failed.number == 0  # failed by its heartbeat, re-run under a new number in its own directory
        (retry,) = [t for t in done if t.system_attrs.get("retry_history") == [0]]
        assert retry.number == 1  # asked first, while trial 0's orphaned job still trains there: it waited for it
        directories = sorted(directory_number(t) for t in done)
        assert directories == [0, 2]  # the study reached n_trials, each trial done once
        assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "2"]  # never a second directory
        metrics = [json.loads(line) for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 101))  # every step logged once
        assert Summary.load(sweep / "0" / "summary.json").global_step == 100
        rows = (sweep / TRIALS).read_text()
        assert "its sweeper stopped: run again as trial" in rows
        shown = subprocess.run([sys.executable, "-m", "trlm.cli", "sweep", str(sweep)], capture_output=True,
                               text=True, env=env)  # fmt: skip
        assert shown.returncode == 0 and f"study {study} (minimize, 3 trials)" in shown.stdout  # from study.yaml
    finally:
        if study in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
            optuna.delete_study(study_name=study, storage=storage)


@pytest.mark.slow
def test_the_dashboard_serves_the_studys_trials_over_http(tmp_path):
    storage = open_storage(None, tmp_path, parallel=False)
    study = optuna.create_study(study_name="lr", storage=storage, direction="minimize")
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1) - 0.3) ** 2, n_trials=3)
    record_study(tmp_path, "lr", None)
    assert OmegaConf.load(tmp_path / STUDY).storage == str(tmp_path / "optuna.journal")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "trlm.cli", "sweep", str(tmp_path), "--serve", "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        said = server.stdout.readline()
        assert f"the dashboard of lr at http://localhost:{port}/" in said
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        (summary,) = studies
        assert summary["study_name"] == "lr"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=5) as answer:
            trials = json.loads(answer.read())["trials"]
        assert len(trials) == 3 and all(t["state"] == "Complete" for t in trials)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def test_serving_a_port_in_use_is_one_line(tmp_path):
    storage = open_storage(None, tmp_path, parallel=False)
    optuna.create_study(study_name="lr", storage=storage)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "trlm.cli", "sweep", str(tmp_path), "--serve", "--port",
                                 str(port)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and f"port {port} is in use: choose another with --port" in result.stderr
