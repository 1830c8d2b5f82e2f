"""The README's commands, extracted from README.md itself and run on a shortened configuration.

Docs cannot drift: every shell command in the Prepare, Train, Export, Serve and Inference sections
and the Python inference example run as written, with only these changes: `lmfast` runs as
`python -m lmfast` (the same entry point without relying on PATH), training is cut to a few steps,
and the server listens on a free port instead of 8000.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
SHORTEN = {"--max_steps 2000": "--max_steps 6", "--num_warmup_steps 100": "--num_warmup_steps 2"}

pytestmark = pytest.mark.slow


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def shell_commands(text: str) -> list[str]:
    """Commands of the README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def command_starting(commands: list[str], prefix: str) -> str:
    matches = [c for c in commands if c.startswith(prefix)]
    assert matches, f"README.md has no command starting with {prefix!r}"
    return matches[0]


def as_python(command: str, port: int) -> str:
    for old, new in SHORTEN.items():
        command = command.replace(old, new)
    command = command.replace("8000", str(port))
    command = re.sub(r"^lmfast ", f"{sys.executable} -m lmfast ", command)
    command = re.sub(r"^python -", f"{sys.executable} -", command)
    return command


# the commands run in a scratch directory: make this checkout's lmfast importable there too
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
}


def run(command: str, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        command, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited with {server.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {timeout} s")


def test_readme_commands_run_as_written(tmp_path):
    text = README.read_text(encoding="utf-8")
    commands = shell_commands(text)
    shutil.copytree(REPO_ROOT / "data" / "documents", tmp_path / "data" / "documents")
    port = free_port()

    prepare = command_starting(commands, "python -m lmfast.prepare")
    assert run(as_python(prepare, port), tmp_path).strip().endswith("data/datasets/nietzsche/0")
    description = json.loads((tmp_path / "data/datasets/nietzsche/0/description.json").read_text())
    assert description["number_of_train_samples"] > 1000

    train = command_starting(commands, "lmfast train --dataset_dir")
    run(as_python(train, port), tmp_path)
    experiment = tmp_path / "data/experiments/nietzsche/0"
    assert (experiment / "hf" / "config.json").is_file() and (
        experiment / "checkpoints" / "last.ckpt"
    ).is_file()

    export = command_starting(commands, "lmfast export onnx")
    run(as_python(export, port), tmp_path)
    export_dir = tmp_path / "data/exports/nietzsche"
    assert json.loads((export_dir / "export.json").read_text())["parity"]["passed"] is True

    generate = command_starting(commands, "lmfast generate")
    assert run(as_python(generate, port), tmp_path).startswith("Supposing that Truth is a woman")

    inference = next(block for block in fenced_blocks(text, "python") if "Generator.load" in block)
    script = tmp_path / "inference.py"
    script.write_text(inference, encoding="utf-8")
    run(f"{sys.executable} {script}", tmp_path)

    serve = command_starting(commands, "lmfast serve")
    server = subprocess.Popen(
        "exec " + as_python(serve, port), shell=True, cwd=tmp_path, env=ENV, start_new_session=True
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health_check/", server)
        curl = json.loads(
            run(as_python(command_starting(commands, "curl -s localhost:8000"), port), tmp_path)
        )
        assert len(curl["texts"]) == 1 and isinstance(curl["texts"][0], str)
        # the official openai client against /v1 (run() asserts it exits 0, i.e. the call succeeded)
        run(as_python(command_starting(commands, 'python -c "from openai'), port), tmp_path)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    assert server.returncode == 0


def test_demo_runs_end_to_end_on_a_short_training(tmp_path):
    """The README's first command, `lmfast demo`, with a few training steps."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmfast",
            "demo",
            "--work_dir",
            str(tmp_path),
            "--max_steps",
            "4",
            "--documents_dir",
            str(REPO_ROOT / "data" / "documents" / "nietzsche"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "=== generated text" in result.stdout and "lmfast demo: done" in result.stdout
    assert (tmp_path / "exports" / "nietzsche" / "model.onnx").is_file()
