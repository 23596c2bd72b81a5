"""`trlm sweep`: a study's table (trlm/study.py), its dashboard (trlm/dashboard.py), or its driver submitted as a
Slurm job (trlm/sweep_driver.py). Light: each part imports what it needs when it runs."""

from __future__ import annotations

import argparse


def sweep_command(args: list[str]) -> int:
    from trlm.paths import project_path

    if args[:1] == ["submit"]:
        from trlm.sweep_driver import submit_command

        return submit_command(args[1:])
    parser = argparse.ArgumentParser(prog="trlm sweep", description="a study's trials, or its live dashboard")
    parser.add_argument("dir", help="the sweep directory (outputs/<run>/sweeps/<study>/<stage>)")
    parser.add_argument("--serve", action="store_true", help="serve optuna-dashboard on the study's storage")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8080)
    options = parser.parse_args(args)
    sweep_dir = project_path(options.dir)
    if options.serve:
        from trlm.dashboard import serve

        return serve(sweep_dir, options.host, options.port)
    from trlm.study import print_study

    return print_study(sweep_dir)
