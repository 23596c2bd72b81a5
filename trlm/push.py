"""`trlm push <run dir> --repo owner/name [--private] [--dry-run]`: a trained model on the Hub, with a card
that says how it was made.

The card is built from what the run directory records (huggingface_hub's `ModelCard`): the base
model and the lineage — the earlier stages' repos where they were pushed — the blend with its sha256
and card, the recipe, the figures of `summary.json`, lm-eval's results, the W&B run when it was
tracked, the exact command and the environment. `final/` is uploaded with the card (a LoRA stage's
adapter too, when the run holds one). `--dry-run` writes the card and the list of files into
`<run>/push/` and uploads nothing; without the Hub (or a token), the push is one line naming both
ways on. A push is recorded in `<run>/push.json`, so that a later stage's card links to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_text
from trlm.records import RunRecord, Summary
from trlm.run_dir import ADAPTER, FINAL, RUN_RECORD, SUMMARY, is_finished

PUSHED = "push.json"  # {repo, url, revision}: where this run's model went
PREVIEW = "push"  # --dry-run: the card and the file list, here in the run directory


def pushed_repo(run_dir: Path) -> str | None:
    """The Hub repo a run's model was pushed to, if it was."""
    try:
        return json.loads((run_dir / PUSHED).read_text())["repo"]
    except (OSError, ValueError, KeyError):
        return None


def recipe_table(config: dict[str, Any]) -> str:
    recipe = (config.get("stage") or {}).get("recipe") or {}
    rows = [f"| `{key}` | {value} |" for key, value in sorted(recipe.items()) if value not in (None, {}, [])]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def figures_table(metrics: dict[str, float]) -> str:
    rows = [f"| {key} | {value:.4g} |" for key, value in sorted(metrics.items()) if isinstance(value, int | float)]
    return "\n".join(["| figure | value |", "|---|---:|", *rows])


def command_of(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    words = OmegaConf.to_container(OmegaConf.load(overrides)) if overrides.exists() else []
    return shlex.join(["python", "train.py", *words])


def lineage(record: RunRecord) -> tuple[str | None, str]:
    """(the base model's Hub id, or the earlier stage's pushed repo; a sentence on where the run started)."""
    start = record.start
    if start.get("kind") == "previous_stage":
        previous_dir = Path(start["source"]).parent
        repo = pushed_repo(previous_dir)
        where = f"[{repo}](https://huggingface.co/{repo})" if repo else f"`{previous_dir}` (not pushed)"
        return repo, f"stage `{start.get('stage')}` of the same run, {where}"
    source = start.get("source") or ""
    return (source if source.count("/") == 1 else None), f"`{source}` ({start.get('kind')})"


def wandb_link(run_dir: Path, config: dict[str, Any]) -> str | None:
    tracking = config.get("tracking") or {}
    run_id = run_dir / "wandb-run-id"
    if "wandb" not in (tracking.get("report_to") or []) or not run_id.exists():
        return None
    entity = tracking.get("entity") or "<entity>"
    return f"https://wandb.ai/{entity}/{tracking.get('project', 'trlm')}/runs/{run_id.read_text().strip()}"


def model_card(run_dir: Path, repo: str) -> str:
    """The card of a finished run, built from its records (huggingface_hub's ModelCard)."""
    from huggingface_hub import ModelCard, ModelCardData

    summary, record = Summary.load(run_dir / SUMMARY), RunRecord.load(run_dir / RUN_RECORD)
    if summary is None or record is None:
        raise TrlmError(f"{run_dir} holds no finished run ({SUMMARY} and {RUN_RECORD}): nothing to push")
    config_file = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.exists() else {}
    stage = config.get("stage") or {}
    base, started = lineage(record)
    blend = record.data
    lm_eval = run_dir / "lm_eval" / "results.json"
    evaluation = (f"lm-evaluation-harness: `{lm_eval.relative_to(run_dir)}` "
                  f"({', '.join(json.loads(lm_eval.read_text()).get('results', {}))})") if lm_eval.exists() else (
        "No lm-evaluation-harness run (`trlm eval <run> tasks=...`).")  # fmt: skip
    tracked = wandb_link(run_dir, config)
    data = ModelCardData(
        language=["en"], license="apache-2.0", library_name="transformers", base_model=base,
        datasets=[blend["name"]] if "/" in str(blend.get("name", "")) else None,
        tags=["trlm", "reasoning", stage.get("name", summary.stage), str(stage.get("trainer", ""))],
        model_name=repo,
    )  # fmt: skip
    versions = ", ".join(f"{name} {version}" for name, version in sorted(record.versions.items()))
    content = f"""---
{data.to_yaml()}
---

# {repo}

{stage.get("description") or summary.stage}: stage `{summary.stage}` of run `{summary.run_name}`, trained with
[trlm](https://github.com/) (`{stage.get("trainer")}` trainer, TRL). It starts from {started}.

## How it was made

```bash
{command_of(run_dir)}
```

- **Data**: blend `{blend.get("name")}`, rows {blend.get("rows")}, content sha256 `{blend.get("sha256")}`
  (its card: `{blend.get("prepared", "?")}/README.md`).
- **Start**: {started}; fingerprint of this run `{record.fingerprint}`.
- **Hardware**: `{record.hardware}`, {record.world_size} rank(s), global batch {record.global_batch}.
- **Code**: git `{(record.git or {}).get("sha")}`{" (uncommitted changes)" if (record.git or {}).get("dirty") else ""};
  {versions}.
{f"- **Tracked**: [W&B run]({tracked})" if tracked else ""}

### Recipe

{recipe_table(config)}

System prompt: {json.dumps(stage.get("system_prompt", ""))}

## Results

{summary.global_step} optimizer steps. Objective `{summary.objective.get("metric")}` =
{summary.objective.get("value")} ({summary.objective.get("direction")}).

{figures_table(summary.metrics)}

{evaluation}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}")
messages = [{{"role": "user", "content": "What is 12 + 30?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(inputs, max_new_tokens=256)[0]))
```
"""
    return str(ModelCard(content))


def files_to_push(run_dir: Path) -> list[Path]:
    folders = [run_dir / FINAL, *([run_dir / ADAPTER] if (run_dir / ADAPTER).is_dir() else [])]
    return sorted(p for folder in folders for p in folder.rglob("*") if p.is_file())


def push(run_dir: Path, repo: str, private: bool = True, dry_run: bool = False) -> str:
    """Pushes (or previews) a finished run's model and card; returns where it went (or the preview folder)."""
    if not is_finished(run_dir):
        raise TrlmError(f"{run_dir} is not a finished run (no completed {SUMMARY} and {FINAL}/): nothing to push")
    if repo.count("/") != 1:
        raise TrlmError(f"--repo {repo}: write it owner/name")
    card = model_card(run_dir, repo)
    files = files_to_push(run_dir)
    if dry_run:
        preview = run_dir / PREVIEW
        preview.mkdir(exist_ok=True)
        atomic_write_text(preview / "README.md", card)
        listing = [f"{p.relative_to(run_dir)}\t{p.stat().st_size}" for p in files]
        atomic_write_text(preview / "files.txt", "\n".join(listing) + "\n")
        return str(preview)
    from trlm.hub import hub_reachable

    token = os.environ.get("HF_TOKEN")
    if not hub_reachable() or not token:
        why = "the Hub is unreachable (or HF_HUB_OFFLINE is set)" if token else "HF_TOKEN is not set"
        raise TrlmError(f"cannot push {run_dir} to {repo}: {why}. Set HF_TOKEN on a connected machine, or see "
                        f"what would be pushed with --dry-run")  # fmt: skip
    from huggingface_hub import HfApi

    from trlm.progress import progress

    api = HfApi(token=token)
    url = api.create_repo(repo, private=private, exist_ok=True).url
    for folder in progress([run_dir / FINAL, *([run_dir / ADAPTER] if (run_dir / ADAPTER).is_dir() else [])],
                           f"pushing {repo}", unit="folder"):  # fmt: skip
        api.upload_folder(repo_id=repo, folder_path=str(folder), path_in_repo="" if folder.name == FINAL else
                          folder.name, commit_message=f"trlm: {folder.name} of {run_dir.name}")  # fmt: skip
    commit = api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo,
                             commit_message="trlm: model card")  # fmt: skip
    atomic_write_text(run_dir / PUSHED, json.dumps({"repo": repo, "url": str(url), "revision": commit.oid}) + "\n")
    return str(url)


def push_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trlm push", description="push a finished run's model with its card")
    parser.add_argument("run", help="a finished run directory")
    parser.add_argument("--repo", required=True, help="the Hub repo: owner/name")
    parser.add_argument("--private", action="store_true", help="a private repo")
    parser.add_argument("--dry-run", action="store_true", help="write the card and the file list locally only")
    options = parser.parse_args(args)
    from trlm.paths import project_path

    where = push(project_path(options.run), options.repo, options.private, options.dry_run)
    print(f"card and file list in {where} (nothing uploaded)" if options.dry_run else f"pushed to {where}")
    return 0
