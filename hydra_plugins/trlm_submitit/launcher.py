"""hydra-submitit-launcher's Slurm and local launchers, unchanged but for how a failed job is reported.

submitit re-raises a job's failure in the launching process with the job's whole trace, and Hydra
prints that with its own; a job that raised comes back FAILED and Hydra prints its trace. Here
either becomes one line (Hydra prints a `CompactHydraException` alone): what the job raised, and
where to look. The conf/launcher presets point `_target_` here.
"""

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf

from trlm.errors import TrlmError

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


def failed_return(job: JobReturn) -> str:
    error = job._return_value
    overrides = " ".join(o for o in job.overrides or () if not o.startswith("hydra."))
    kind = "TrlmError" if isinstance(error, TrlmError) else type(error).__name__  # trlm's own, whichever subclass
    said = f"[{overrides}] {kind}: {'; '.join(str(error).splitlines())}"  # every problem, one line
    if isinstance(error, TrlmError) or job.hydra_cfg is None:  # trlm's own errors say what to do
        return said
    return f"{said} (its run directory: {job.hydra_cfg.hydra.runtime.output_dir})"


class OneLineFailures:
    """A job that raised (Hydra returns it FAILED) or died (submitit raises): one line, after all ran."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            jobs = super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]
        except (FailedJobError, UncompletedJobError) as failure:
            raise JobFailed(one_line(failure)) from None
        failed = [failed_return(job) for job in jobs if job.status == JobStatus.FAILED]
        if failed:
            raise JobFailed(f"trlm: {len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed))
        return jobs


class SlurmLauncher(OneLineFailures, submitit_launcher.SlurmLauncher):
    def setup(self, *, config: Any, **kwargs: Any) -> None:
        """With hardware.trials_per_gpu = k > 1 each job asks a 1/k share of one GPU (trlm/slurm.py)."""
        from trlm.slurm import shared_gpu_request

        super().setup(config=config, **kwargs)
        self.params = shared_gpu_request(self.params, config.hardware)


def slurm_executor(launcher: dict[str, Any]) -> Any:
    """The submitit executor hydra-submitit-launcher builds from `hydra.launcher` (same mapping as its
    `launch`: `max_num_timeout` at init, queue-wide keys as they are, the rest with a `slurm_` prefix)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = {key: value for key, value in launcher.items() if key != "_target_"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))  # fmt: skip
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
    return executor


def sbatch_script(launcher: dict[str, Any]) -> str:
    """The sbatch script one job of this launcher is submitted with (submitit writes the same file)."""
    slurm = slurm_executor(launcher)._executor
    return slurm._make_submission_file_text(slurm._submitit_command_str, "plan")


class LocalLauncher(OneLineFailures, submitit_launcher.LocalLauncher):
    pass
