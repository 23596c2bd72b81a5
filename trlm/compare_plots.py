"""The pictures of `trlm compare`: the report's training curves per stage, Optuna's sweep plots, one HTML page.

Each PNG carries what it draws in a `trlm` text chunk (every line's label and number of points,
read off the axes after drawing), so a test or a script can check a figure without its pixels.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none used
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from trlm.runs import Run

log = logging.getLogger(__name__)
SMOOTHING = 0.6  # TensorBoard's default EMA weight
PANELS = {  # trainer: (metric or (solid, dashed) pair, what the report calls it)
    "sft": [("loss", "training loss"), ("mean_token_accuracy", "mean token accuracy"), ("entropy", "output entropy")],
    "dpo": [("loss", "training loss"), ("rewards/accuracies", "reward accuracies"),
            ("rewards/margins", "reward margins"),
            (("rewards/chosen", "rewards/rejected"), "chosen / rejected rewards")],
    # GRPO: each reward's mean and std are added per run (`panels`): their names are the stage's own
    "grpo": [("reward", "reward (weighted sum)"), ("reward_std", "reward std within groups"),
             ("kl", "KL to the reference"), ("completions/mean_length", "completion length (tokens)"),
             ("clip_ratio/region_mean", "clipped ratio"), ("loss", "training loss")],
}  # fmt: skip
STYLES = ("-", "--", ":", "-.")
REPORT = {  # stage: (its name in the report, figure numbers of its panels in order)
    "sft": ("Stage 1 SFT", (2, 3, 4)),
    "sft_think": ("Stage 2 SFT (think)", (5, 6, 7)),
    "dpo": ("Stage 3 DPO", (8, 9, 10, None)),  # the report shows chosen / rejected inside Figure 9
    "grpo": ("Stage 4 GRPO", ()),  # the report's future work: no figure of its own
}
Figure = tuple[str, Path]  # (title, png)


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    out, last = [], 0.0
    for i, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight**i))
    return out


def series(run: Run, key: str) -> tuple[list[int], list[float]]:
    rows = [row for row in run.history if isinstance(row.get(key), int | float)]
    return [row["step"] for row in rows], [float(row[key]) for row in rows]


def title_of(stage: str, index: int, label: str) -> str:
    name, numbers = REPORT.get(stage, (stage, ()))
    number = numbers[index] if index < len(numbers) else None
    return f"Figure {number}: {name} {label}" if number else f"{name}: {label}"


def save(fig: plt.Figure, ax: plt.Axes, path: Path) -> Path:
    drawn = [{"label": line.get_label(), "points": len(line.get_xdata()), "alpha": line.get_alpha()}
             for line in ax.get_lines()]  # fmt: skip
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"trlm": json.dumps(drawn)})
    plt.close(fig)
    return path


def legend(ax: plt.Axes, entries: int) -> None:
    if entries <= 6:
        ax.legend(fontsize="small", loc="best")
    else:  # many runs: beside the plot, where it hides no line (bbox_inches="tight" keeps it in the file)
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + entries // 20)


def panels(runs: list[Run]) -> list[tuple[str | tuple[str, ...], str]]:
    """The trainer's panels; for GRPO, one with every reward's mean and one with their std (a line style each)."""
    chosen = PANELS.get(runs[0].trainer, PANELS["sft"])
    if runs[0].trainer != "grpo":
        return chosen
    names = sorted({key.split("/")[1] for run in runs for row in run.history for key in row
                    if key.startswith("rewards/") and key.endswith("/mean")})  # fmt: skip
    per_reward = [(tuple(f"rewards/{name}/{stat}" for name in names[: len(STYLES)]), f"each reward's {stat}")
                  for stat in ("mean", "std")] if names else []  # fmt: skip
    return [chosen[0], *per_reward, *chosen[1:]]


def stage_figures(stage: str, runs: list[Run], target: Path) -> list[Figure]:
    """The report's figures for this stage's trainer, one line per run; a metric no run logged is left out."""
    figures = []
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for index, (metric, label) in enumerate(panels(runs)):
        keys = metric if isinstance(metric, tuple) else (metric,)
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        entries = 0
        for i, run in enumerate(runs):
            for key, style in zip(keys, STYLES, strict=False):
                steps, values = series(run, key)
                if not steps:
                    continue
                part = key.split("/")[1] if key.startswith("rewards/") and key.count("/") == 2 else key.split("/")[-1]
                name = run.name if len(keys) == 1 else f"{run.name} {part}"
                color = colors(i % colors.N)
                ax.plot(steps, values, style, color=color, alpha=0.25, linewidth=1, label="_raw")
                ax.plot(steps, smooth(values), style, color=color, linewidth=2, label=name)
                entries += 1
        if not entries:
            plt.close(fig)
            continue
        title = title_of(stage, index, label)
        ax.set(title=title, xlabel="optimizer step", ylabel=label)
        ax.grid(alpha=0.3)
        legend(ax, entries)
        slug = "-".join(k.replace("/", "_") for k in keys)
        figures.append((title, save(fig, ax, target / f"{stage}-{slug}.png")))
    return figures


def sweep_figures(sweep_dir: Path, target: Path) -> list[Figure]:
    """Optuna's own plots of each study in the sweep's journal; one that cannot be drawn yet is said why."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    from trlm.study import sweep_storage

    storage, studies = sweep_storage(sweep_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # its plots are "experimental"
    if not optuna_plots.is_available():
        from trlm.errors import TrlmError

        raise TrlmError("Optuna's plots need matplotlib: pip install matplotlib")
    figures = []
    for study_name in studies:
        study = optuna.load_study(study_name=study_name, storage=storage)
        for name, plot in (("optimization history", optuna_plots.plot_optimization_history),
                           ("parameter importances", optuna_plots.plot_param_importances),
                           ("parallel coordinates", optuna_plots.plot_parallel_coordinate)):  # fmt: skip
            title = f"{study.study_name}: {name}"
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances need two finished trials
                log.warning("%s not drawn: %s", title, error)
                continue
            ax = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = ax.figure
            fig.set_size_inches(8, 4.5)
            ax.set_title(f"{study.study_name}: {ax.get_title()}")  # Optuna's own title, named by study
            slug = f"{study.study_name}-{name.replace(' ', '_')}".replace("/", "_")
            fig.savefig(target / f"{slug}.png", dpi=110, bbox_inches="tight",
                        metadata={"trlm": json.dumps({"trials": len(study.trials)})})  # fmt: skip
            plt.close(fig)
            figures.append((title, target / f"{slug}.png"))
    return figures


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;margin:.5em 0 1.5em}figure{margin:0}figcaption{font-size:13px;color:#555}"""


def write_page(target: Path, inputs: list[str], sections: list[tuple[str, str, list[Figure]]]) -> Path:
    """compare.html: the tables and every figure, images embedded (one file to send or archive)."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>trlm compare</title><style>{STYLE}</style>",
             "<h1>trlm compare</h1>",
             f"<p>{html.escape(' '.join(inputs))} &middot; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC &middot; "
             "lines smoothed (EMA 0.6), raw values faint behind</p>"]  # fmt: skip
    for heading, table, figures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{table}")
        for title, png in figures:
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(title)}</figcaption></figure>")  # fmt: skip
    page = target / "compare.html"
    page.write_text("\n".join(parts) + "\n")
    return page
