"""The README's and the docs pages' commands, extracted from the pages themselves and run in a user's order.

Docs cannot drift: `lmfast demo` runs first (as a new user would), then the README's walkthrough stage
by stage (prepare, train, export, generate, serve with curl and the openai client, the console bot,
eval), each command read from the docs page it belongs to and checked equal to the README's copy; then
the pages' further examples (docs/serving.md's Python `Generator`, docs/prepare.md's globs, shards and
merge and its Python reader, docs/tokenizers.md's tokenizer example) and the walkthrough again after an
interrupted train. They run as written in one scratch directory, with only these changes: `lmfast` is
this environment's console script (or `python -m lmfast` where there is none), training is cut to a few
steps, and the server listens on a free port instead of 8000. tests/test_docs.py checks that every other
command of the docs is listed there with the reason it cannot run here.
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
README = "README.md"
SHORTEN = {"--max_steps 2000": "--max_steps 6", "--num_warmup_steps 100": "--num_warmup_steps 2"}
DEMO_STEPS = 4
# what an export must not print: third-party INFO chatter, torchvision registry notes, temp-dir names
EXPORT_NOISE = ("torchvision", "LeafSpec", ".partial", "INFO root", "INFO fusion", "Loading weights")

pytestmark = pytest.mark.slow


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def page_text(page: str) -> str:
    """A docs page (`README.md`, `docs/prepare.md`, ...) by its path in the repository."""
    return (REPO_ROOT / page).read_text(encoding="utf-8")


def shell_commands(text: str) -> list[str]:
    """Commands of a page's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def command(page: str, prefix: str) -> str:
    """The first command of `page`'s bash blocks that starts with `prefix`."""
    matches = [c for c in shell_commands(page_text(page)) if c.startswith(prefix)]
    assert matches, f"{page} has no command starting with {prefix!r}"
    return matches[0]


def walkthrough(page: str, prefix: str) -> str:
    """A walkthrough command from its stage's page, which the README must show unchanged."""
    on_page = command(page, prefix)
    assert command(README, prefix) == on_page, f"README.md and {page} differ on {prefix!r}"
    return on_page


def python_block(page: str, needle: str) -> str:
    matches = [block for block in fenced_blocks(page_text(page), "python") if needle in block]
    assert matches, f"{page} has no python block containing {needle!r}"
    return matches[0]


def lmfast_command() -> str:
    """The `lmfast` a user types: the console script beside this Python (it does not see the cwd)."""
    script = Path(sys.executable).parent / "lmfast"
    return str(script) if script.is_file() else f"{sys.executable} -m lmfast"


def as_python(line: str, port: int) -> str:
    for old, new in SHORTEN.items():
        line = line.replace(old, new)
    line = line.replace("8000", str(port))
    # `lmfast` where a command starts: the line's start, or inside a `for ...; do` loop
    line = re.sub(r"(^|; do )lmfast ", rf"\g<1>{lmfast_command()} ", line)
    return re.sub(r"^python3? ", f"{sys.executable} ", line)


# the commands run in a scratch directory: make this checkout's lmfast importable there too
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    "TOKENIZERS_PARALLELISM": "false",
}


def run(
    command: str, cwd: Path, timeout: float = 600, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, input=stdin
    )
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    return result


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


def test_ci_runs_the_readme_test_command():
    found = re.search(r"`(python3 -m pytest[^`]*)`", page_text(README))
    assert found, "README.md names no `python3 -m pytest ...` test command"
    assert found.group(1) in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_commands_run_as_written_in_order_after_the_demo(tmp_path):
    shutil.copytree(REPO_ROOT / "data" / "documents", tmp_path / "data" / "documents")
    port = free_port()

    # 1. the set-up's `lmfast demo`, shortened; it must leave the walkthrough's paths free
    demo = command(README, "bash scripts/install.sh && lmfast demo").split("&& ")[1]
    out = run(as_python(f"{demo} --max_steps {DEMO_STEPS}", port), tmp_path).stdout
    assert "=== generated text" in out and "lmfast demo: done" in out
    demo_export = tmp_path / "data/demo/exports/nietzsche"
    assert (demo_export / "model.onnx").is_file()
    assert f"lmfast generate {demo_export.relative_to(tmp_path)} --prompt" in out  # the next steps
    assert f"tensorboard --logdir {demo_export.parent.parent.relative_to(tmp_path)}/experiments" in out

    # 2. the README's walkthrough, in its order, each command as its stage's page has it
    prepare = walkthrough("docs/prepare.md", "python -m lmfast.prepare")
    assert run(as_python(prepare, port), tmp_path).stdout.strip().endswith("data/datasets/nietzsche/0")
    description = json.loads((tmp_path / "data/datasets/nietzsche/0/description.json").read_text())
    assert description["number_of_train_samples"] > 1000

    train = walkthrough("docs/train.md", "lmfast train --dataset_dir data/datasets/nietzsche")
    assert run(as_python(train, port), tmp_path).stdout.strip().endswith("data/experiments/nietzsche/0")
    experiment = tmp_path / "data/experiments/nietzsche/0"
    assert (experiment / "hf" / "config.json").is_file() and (
        experiment / "checkpoints" / "last.ckpt"
    ).is_file()

    export = walkthrough("docs/export.md", "lmfast export onnx")
    exported = run(as_python(export, port), tmp_path)
    export_dir = tmp_path / "data/exports/nietzsche"
    assert exported.stdout.splitlines()[0] == "data/exports/nietzsche"
    assert json.loads((export_dir / "export.json").read_text())["parity"]["passed"] is True
    noise = [line for line in exported.stderr.splitlines() if any(n in line for n in EXPORT_NOISE)]
    assert not noise, noise

    generate = walkthrough("docs/serving.md", "lmfast generate")
    assert run(as_python(generate, port), tmp_path).stdout.startswith("Supposing that Truth is a woman")

    serve = walkthrough("docs/serving.md", "lmfast serve")
    server = subprocess.Popen(
        "exec " + as_python(serve, port), shell=True, cwd=tmp_path, env=ENV, start_new_session=True
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health_check/", server)
        curl = json.loads(
            run(as_python(walkthrough("docs/serving.md", "curl -s localhost:8000"), port), tmp_path).stdout
        )
        assert len(curl["texts"]) == 1 and isinstance(curl["texts"][0], str)
        # the official openai client against /v1 (run() asserts it exits 0, i.e. the call succeeded)
        run(as_python(walkthrough("docs/serving.md", 'python -c "from openai'), port), tmp_path)
        # the console bot, one typed line, then end of input: the prompt comes back with its continuation
        bot = walkthrough("docs/bot.md", "lmfast bot --console")
        chat = run(as_python(bot, port), tmp_path, stdin="Truth is\n").stdout
        assert "bot> Truth is" in chat and "Repeat" in chat, chat
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    assert server.returncode == 0

    evaluated = run(as_python(walkthrough("docs/evaluation.md", "lmfast eval data/"), port), tmp_path).stdout
    report = json.loads((tmp_path / "data/eval-nietzsche.json").read_text())
    assert "perplexity" in evaluated and report["tokens_scored"] > 1000 and report["perplexity"] > 1

    # 3. the pages' further examples: Python generation, more prepare inputs, shards and merge, reading back
    (tmp_path / "inference.py").write_text(
        python_block("docs/serving.md", "Generator.load"), encoding="utf-8"
    )
    run(f"{sys.executable} inference.py", tmp_path)
    globbed = run(
        as_python(command("docs/prepare.md", "lmfast prepare --documents_train_file 'data/"), port), tmp_path
    )
    assert globbed.stdout.strip().endswith("data/datasets/nietzsche_all/0")
    run(as_python(command("docs/prepare.md", "for i in 0 1; do lmfast prepare"), port), tmp_path)
    merged = run(as_python(command("docs/prepare.md", "lmfast prepare merge"), port), tmp_path).stdout.strip()
    assert merged.endswith("data/datasets/nietzsche_all/1")
    assert np_load(tmp_path / merged / "train/corpus.npy") == np_load(
        tmp_path / "data/datasets/nietzsche_all/0/train/corpus.npy"
    )  # byte-identical to the one-process run, as the page says
    assert not list((tmp_path / "data/datasets/nietzsche_all").glob("shard-*"))  # --remove_shards
    reader = python_block("docs/prepare.md", "PreparedDataset(")
    (tmp_path / "read_back.py").write_text(reader, encoding="utf-8")
    run(f"{sys.executable} read_back.py", tmp_path)

    # 4. the tokenizer example: make tokenizer.json, write the factory, prepare from the CLI and Python
    for needle in ("# make_tokenizer.py", "# my_package/my_tokenizer.py"):
        block = python_block("docs/tokenizers.md", needle)
        target = tmp_path / needle.removeprefix("# ")
        target.parent.mkdir(exist_ok=True)
        target.write_text(block, encoding="utf-8")
    run(as_python(command("docs/tokenizers.md", "python make_tokenizer.py"), port), tmp_path)
    assert (tmp_path / "my_package/tokenizer.json").is_file()
    cli = command("docs/tokenizers.md", "lmfast prepare --tokenizer_cls_name my_package")
    first = run(as_python(cli, port), tmp_path).stdout.strip()
    assert first.endswith("data/datasets/nietzsche-mytokenizer/0")
    mine = python_block("docs/tokenizers.md", "import my_package.my_tokenizer")
    (tmp_path / "prepare_mine.py").write_text(mine, encoding="utf-8")
    second = run(f"{sys.executable} prepare_mine.py", tmp_path).stdout.strip()
    assert second.endswith("data/datasets/nietzsche-mytokenizer/1")
    corpora = [np_load(tmp_path / d / "train" / "corpus.npy") for d in (first, second)]
    assert corpora[0] == corpora[1] and len(corpora[0]) > 1000
    description = json.loads((tmp_path / first / "description.json").read_text())
    assert description["vocab_size"] == 4096

    # 5. the walkthrough again in the same directory, after a train stopped by Ctrl-C: the commands
    # name `<name>/latest`, which follows each new version (the stopped run's too: it saved hf/)
    stopped = subprocess.Popen(
        "exec " + as_python(train, port).replace("--max_steps 6", "--max_steps 100000"),
        shell=True, cwd=tmp_path, env=ENV, start_new_session=True, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in stopped.stderr:
        if re.search(r"step \d+/100000", line):  # it trains (the first logged step)
            os.killpg(stopped.pid, signal.SIGINT)
            break
    err = stopped.communicate(timeout=600)[1]
    assert stopped.returncode == 130, err
    assert "lmfast train --resume data/experiments/nietzsche/1" in err
    assert os.readlink(tmp_path / "data/experiments/nietzsche/latest") == "1"
    run(as_python(export, port), tmp_path)  # exports the stopped run
    run(as_python(prepare, port), tmp_path)
    assert os.readlink(tmp_path / "data/datasets/nietzsche/latest") == "1"
    assert run(as_python(train, port), tmp_path).stdout.strip().endswith("data/experiments/nietzsche/2")
    for page, prefix in (
        ("docs/export.md", "lmfast export onnx"),
        ("docs/serving.md", "lmfast generate"),
        ("docs/evaluation.md", "lmfast eval data/"),
    ):
        run(as_python(command(page, prefix), port), tmp_path)
    report = json.loads((tmp_path / "data/eval-nietzsche.json").read_text())
    assert report["source"]["path"].endswith("nietzsche/latest") and report["tokens_scored"] > 1000


def np_load(path: Path) -> bytes:
    """A corpus as bytes (equal corpora, equal bytes), read the way training reads it."""
    import numpy as np

    return np.load(path, mmap_mode="r").tobytes()
