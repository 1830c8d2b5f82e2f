"""Ctrl-C stops `python -m benchmarks` at once: the stage in progress and everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]


def _sigint_as_in_a_terminal() -> None:
    """A terminal's foreground job has SIGINT at its default; a suite started in the background by a
    non-interactive shell (`bash .ci/run &`) inherits it ignored, and the runner would not see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_suite_and_the_running_stage(tmp_path):
    runner = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--stages", "prepare", "--output", str(tmp_path)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )  # fmt: skip
    assert runner.stdout.readline().startswith("== benchmark prepare")
    deadline = time.monotonic() + 60
    # the stage has exec'd (its command line is the stage's): the runner is waiting for it
    while time.monotonic() < deadline:
        stage = [p for p in psutil.Process(runner.pid).children() if "bench_prepare" in " ".join(p.cmdline())]
        if stage:
            break
        time.sleep(0.1)
    assert stage, "no stage process started"
    os.killpg(runner.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the runner's foreground group
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert "interrupted; stopped the stage in progress" in err
    assert not psutil.pid_exists(stage[0].pid) or stage[0].status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "report.json").exists()
