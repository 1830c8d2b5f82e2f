"""The prepared device check cannot rot: its cheapest phase runs end to end in --cpu_smoke mode,
through the same parent (budget, one process per phase, report files) a GPU run uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"

pytestmark = pytest.mark.slow


def test_the_smoke_run_writes_a_report_with_greedy_cpu_equal_device(tmp_path):
    prepared = subprocess.run(
        [sys.executable, str(SCRIPT), "--prepare", "--cpu_smoke"], cwd=REPO, capture_output=True, text=True
    )
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert json.loads(prepared.stdout.splitlines()[-1])["data_mib"] < 64  # what a device call may carry
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu_smoke", "--phases", "equality", "--out", str(tmp_path), "--budget_s", "900"],
        cwd=REPO, capture_output=True, text=True, timeout=1000,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    equality = report["phases"]["equality"]
    assert equality["status"] == "ok", equality
    for model in ("gpt2", "smollm2_shaped"):  # the in-place cache on the CPU vs the concat reference
        assert equality[model]["cpu_equals_device"] and equality[model]["batch_invariant"]
    assert "## equality: ok" in (tmp_path / "report.md").read_text()


def test_a_run_without_prepared_data_says_how_to_prepare(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    monkeypatch.setattr(gpu_check, "DATA", tmp_path / "none")
    assert gpu_check.main(["--cpu_smoke", "--out", str(tmp_path / "out")]) == 2
