"""`trlm sweep DIR --serve`: optuna-dashboard on the study's own storage (journal or RDB), while it runs.

optuna-dashboard is an optional extra (`pip install -e '.[dashboard]'`); it reads the storage the sweeper
recorded in `study.yaml`, so what it shows is what the sweeper and its trials write.
"""

from __future__ import annotations

import errno
from pathlib import Path

from trlm.errors import TrlmError
from trlm.study import sweep_storage


def serve(sweep_dir: Path, host: str, port: int) -> int:
    try:
        import optuna_dashboard
    except ImportError:
        raise TrlmError("trlm sweep --serve needs optuna-dashboard: pip install -e '.[dashboard]'") from None
    storage, names = sweep_storage(sweep_dir)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"trlm: the dashboard of {', '.join(names)} at http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise TrlmError(f"port {port} is in use: choose another with --port") from None
        raise TrlmError(f"cannot serve on {host}:{port}: {error.strerror}") from None
    return 0
