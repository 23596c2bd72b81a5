"""Where benchmarks leave their figures: docs/bench/<name>.json (and printed), one place for all of them."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(name: str, figures: dict) -> Path:
    out = ROOT / "docs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return path
