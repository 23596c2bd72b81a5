"""trlm's submitit launchers (hydra_plugins/trlm_submitit): a failed job comes back as one line."""

from __future__ import annotations

import pytest

from hydra_plugins.trlm_submitit.launcher import job_log, what_went_wrong
from tests.helpers import QUICK

SUBMITIT_FAILURE = """Job (task=0) failed during processing with trace:
----------------------
Traceback (most recent call last):
  File "x.py", line 1, in <module>
trlm.errors.TrlmError: the blend changed
----------------------
You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:
  - /o/.submitit/7/7_0_log.err
  - /o/.submitit/7/7_0_log.out"""


def test_what_went_wrong_is_the_last_line_of_the_jobs_trace_not_of_submitits_message():
    assert what_went_wrong(SUBMITIT_FAILURE) == "trlm.errors.TrlmError: the blend changed"
    assert job_log(SUBMITIT_FAILURE) == "/o/.submitit/7/7_0_log.err"
    assert what_went_wrong("RuntimeError: plain\n") == "RuntimeError: plain"


@pytest.mark.slow
def test_a_job_that_raised_is_one_line_naming_its_overrides(run_cli):
    result = run_cli("-m", *QUICK, "launcher=local", "+stage.recipe.learning_rat=0.1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "jobs failed" in line]
    assert line.startswith("trlm: 1 of 1 jobs failed: [") and "+stage.recipe.learning_rat=0.1] TrlmError: " in line
    assert "stage.recipe.learning_rat is not a trlm setting" in line  # trlm's own message
