"""Where trlm's own files are: the project root holds conf/, the shipped demo data and outputs/."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def project_path(path: str | Path) -> Path:
    """`path` (absolute) if absolute or present from the cwd, else relative to the project root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return PROJECT_ROOT / path
