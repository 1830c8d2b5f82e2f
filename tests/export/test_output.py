"""The export's output on disk: --overwrite never deletes what is not an export, crash leftovers
are swept, unreadable sources and unwritable outputs are one line and exit 2."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmfast.export.cli import main
from lmfast.export.output import sweep_stale

REPO = Path(__file__).resolve().parents[2]


def _run_cli(*args: str, preexec_fn=None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmfast", "export", "onnx", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("lmfast export onnx:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_overwrite_refuses_the_source_its_parents_and_non_exports(varied_model_dir, tmp_path, capsys):
    source = tmp_path / "work" / "model"
    shutil.copytree(varied_model_dir, source)
    before = sorted(p.name for p in source.iterdir())
    for output in (source, source.parent, tmp_path):
        assert main(["onnx", str(source), "--output", str(output), "--overwrite"]) == 2
        assert "source" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["onnx", str(source), "--output", str(other), "--overwrite"]) == 2
    assert "not an lmfast export" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in source.iterdir()) == before


def test_overwrite_replaces_an_earlier_export(onnx_dir, varied_model_dir, tmp_path):
    output = tmp_path / "export"
    shutil.copytree(onnx_dir, output)
    (output / "export.json").write_text(json.dumps({"old": True}))
    assert (
        main(["onnx", str(varied_model_dir), "--output", str(output), "--overwrite", "--parity_steps", "4"])
        == 0
    )
    assert "parity" in json.loads((output / "export.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing aside, nothing partial


def test_leftovers_of_dead_runs_are_swept_and_an_interrupted_replace_is_undone(tmp_path):
    output = tmp_path / "export"
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".export.partial-{dead}", f".export.partial-{alive}", f".export.replaced-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "export.json").write_text(name)
    (tmp_path / ".other.partial-1").mkdir()  # another output's: not ours to touch
    # the dead run had renamed the old export aside and died before the new one arrived
    sweep_stale(output)
    assert (output / "export.json").read_text() == f".export.replaced-{dead}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".export.partial-{alive}",
        ".other.partial-1",
        "export",
    ]


@pytest.mark.slow
def test_a_killed_export_leaves_a_partial_dir_that_the_next_run_removes(varied_model_dir, tmp_path):
    output = tmp_path / "export"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "lmfast",
        "export",
        "onnx",
        str(varied_model_dir),
        "--output",
        str(output),
    ]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / f".export.partial-{child.pid}"
    try:
        for _ in range(1200):
            if partial.exists():
                break
            if child.poll() is not None:
                pytest.fail("the export finished before it could be killed")
            import time

            time.sleep(0.05)
        assert partial.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert partial.exists() and not output.exists()
    result = _run_cli(str(varied_model_dir), "--output", str(output), "--parity_steps", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_truncated_checkpoint_and_safetensors_are_one_line(varied_model_dir, tmp_path):
    import torch

    checkpoint = tmp_path / "exp" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {"model.w": torch.zeros(1000)}, "hyper_parameters": {}}, checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    _one_line_error(_run_cli(str(checkpoint), "--output", str(tmp_path / "a")), str(checkpoint), "checkpoint")
    checkpoint.write_bytes(os.urandom(4096))
    _one_line_error(_run_cli(str(checkpoint), "--output", str(tmp_path / "a")), str(checkpoint))

    model = tmp_path / "model"
    shutil.copytree(varied_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    _one_line_error(_run_cli(str(model), "--output", str(tmp_path / "b")), "cannot read the model weights")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing(varied_model_dir, tmp_path):
    """A file-size limit stands in for a full disk: every write past it fails (EFBIG), as a full
    disk's do (ENOSPC), through the same path."""

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    output = tmp_path / "out" / "export"
    result = _run_cli(str(varied_model_dir), "--output", str(output), preexec_fn=small_files)
    _one_line_error(result, str(output), "cannot write the export")
    assert not output.exists() and list((tmp_path / "out").iterdir()) == []


def test_an_unwritable_output_is_one_line(varied_model_dir, tmp_path):
    if os.geteuid() == 0:
        output = Path("/sys/lmfast-export")  # sysfs refuses new directories even to root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        output = locked / "export"
    _one_line_error(_run_cli(str(varied_model_dir), "--output", str(output)), "cannot write the export")
