"""The house's rules: light commands load no training stack, and no module imports itself back."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import finish_run
from trlm.paths import PROJECT_ROOT

HEAVY = ("torch", "transformers", "trl")
PACKAGES = ("trlm", "hydra_plugins")

# Runs one command in a fresh interpreter and says, on its way out, which heavy modules it had loaded.
PROBE = """
import atexit, sys
atexit.register(lambda: print("LOADED=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr))
sys.argv = {argv!r}
from trlm.cli import {entry}
{entry}()
"""


def loaded_by(entry: str, *argv: str, cwd: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    code = PROBE.format(heavy=HEAVY, argv=["trlm", *argv], entry=entry)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})  # fmt: skip
    said = [line for line in result.stderr.splitlines() if line.startswith("LOADED=")]
    assert said, result.stderr[-2000:]
    return {m for m in said[-1].removeprefix("LOADED=").split(",") if m}, result


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """A finished run and a study, for the commands that read them."""
    import optuna

    from trlm.study import open_storage

    root = tmp_path_factory.mktemp("light") / "outputs"
    run = root / "demo" / "sft"
    finish_run(run, {"train_loss": 1.0, "eval_loss": 0.5})
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    sweep = root / "demo" / "sweeps" / "lr" / "sft"
    study = optuna.create_study(study_name="lr", storage=open_storage(None, sweep, parallel=False))
    study.enqueue_trial({"x": 1.0})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    study.tell(trial, 0.5)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["plan", "experiment=demo", "stage=dpo"],
        ["plan", "pipeline", "experiment=demo"],
        ["plan", "-m", "stage=dpo", "sweep=dpo_beta", "hardware=mi300x", "launcher=mi300x"],
        ["results", "{outputs}"],
        ["sweep", "{outputs}/demo/sweeps/lr/sft"],
        ["compare", "{outputs}/demo/sft", "--out", "{outputs}/compared"],
    ],
    ids=["help", "plan", "plan-pipeline", "plan-slurm-sweep", "results", "sweep", "compare"],
)
def test_light_commands_load_no_training_stack(outputs, argv):
    argv = [arg.format(outputs=outputs) for arg in argv]
    loaded, result = loaded_by("main", *argv, cwd=outputs.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert loaded == set(), f"trlm {' '.join(argv)} loaded {loaded}"


@pytest.mark.slow
def test_a_refused_sweep_is_planned_without_the_training_stack(tmp_path):
    """The sweeper's preflight plans a trial as its job will, in the driver, without torch."""
    args = ["-m", f"paths.output_root={tmp_path}", "experiment=demo", "sweep=lr", "stage.evaluation.generate=false",
            "stage.objective.metric=answer_accuracy"]  # fmt: skip
    loaded, result = loaded_by("train_main", *args, cwd=tmp_path)
    assert result.returncode == 2 and "needs stage.evaluation.generate=true" in result.stderr
    assert loaded == set()


def test_importing_the_cli_and_the_planner_loads_no_training_stack():
    code = "import sys, trlm.cli, trlm.stage_plan, trlm.plan; print(','.join(m for m in %r if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code % (HEAVY,)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules a file imports, anywhere in it (functions too): `from a.b import c` is a.b.c
    when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) - {module_name(p)} for p in files}
    for module in graph:  # a package's __init__ is imported with any of its modules: not an edge of its own
        graph[module] = {m for m in graph[module] if not (module.startswith(f"{m}.") and m in PACKAGES)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert "trlm.run" in graph and "trlm.stage_plan" in graph["trlm.run"]  # the walk sees imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_below_the_plan_no_module_reads_the_hydra_config():
    """Only the CLI, composition and planning layers take a DictConfig; execution takes the plan's parts."""
    allowed = {"trlm.cli", "trlm.compose", "trlm.checks", "trlm.stage_plan", "hydra_plugins.trlm_optuna.sweeper"}
    readers = {
        module_name(path)
        for package in PACKAGES
        for path in (PROJECT_ROOT / package).rglob("*.py")
        if "DictConfig" in path.read_text()
    }
    assert readers <= allowed, readers - allowed
