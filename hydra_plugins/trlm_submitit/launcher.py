"""hydra-submitit-launcher's Slurm and local launchers, unchanged but for how a failed job is reported.

submitit re-raises a job's failure in the launching process with the job's whole trace, and Hydra
prints that with its own. Here it becomes one line (Hydra prints a `CompactHydraException` alone):
what the job raised and where its log is. The conf/launcher presets point `_target_` here.
"""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

RULE = "-" * 22  # submitit puts a failed job's trace between two of these


class JobFailed(CompactHydraException):
    pass


def what_went_wrong(message: str) -> str:
    """The last line of a failed job's trace (or of any message): the exception and its text."""
    parts = message.split(RULE)
    trace = parts[1] if len(parts) == 3 else message
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


def job_log(message: str) -> str | None:
    paths = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- /")]
    return next((p for p in paths if p.endswith(".err")), paths[0] if paths else None)


def one_line(error: BaseException) -> str:
    message = str(error)
    where = job_log(message)
    return f"trlm: a job failed: {what_went_wrong(message)}" + (f" (its log: {where})" if where else "")


class OneLineFailures:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]
        except (FailedJobError, UncompletedJobError) as failure:
            raise JobFailed(one_line(failure)) from None


class SlurmLauncher(OneLineFailures, submitit_launcher.SlurmLauncher):
    pass


class LocalLauncher(OneLineFailures, submitit_launcher.LocalLauncher):
    pass
