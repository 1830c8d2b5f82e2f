"""No doc command can rot: every `bash` command and `python` block of the README and of every page in
docs/ is either run by a named test or listed here as not runnable on this machine, with the reason.

A snippet is one command of a bash block (continuation lines joined, comments dropped, as
tests/test_readme.py reads them) or one whole python block. Each is claimed by exactly one entry:
a bash command by the entry whose needle it starts with, a python block by the entry whose needle
it contains. An entry that claims nothing is stale and fails too. A RUN entry names the test that
runs it, whose source must name both the page and the needle. The links between the pages must
reach a file and a heading that exist, and no page may use the project's historical names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.test_readme import fenced_blocks, shell_commands

REPO_ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = "tests/test_readme.py::test_readme_commands_run_as_written_in_order_after_the_demo"
CHAT_EXPORTS = "tests/data/test_chat_exports.py::test_the_docs_page_commands_run_as_written"
TELEGRAM = (
    "needs a Telegram bot token and Telegram; tests/bot/ run the same bot against a local Bot API server"
)
SMOLLM2 = "the real SmolLM2-135M on 2 CPU cores takes minutes per step or request; "
BENCHMARK = "a benchmark: minutes to hours of timing on a quiet machine, figures in docs/benchmarks.md"

# (page, needle) -> the test that runs it (the demo's `bash scripts/install.sh` is what .ci/run runs first)
RUN: dict[tuple[str, str], str] = {
    ("README.md", "bash scripts/install.sh && lmfast demo"): WALKTHROUGH,
    ("README.md", "python -m lmfast.prepare"): WALKTHROUGH,
    ("README.md", "lmfast train --dataset_dir data/datasets/nietzsche"): WALKTHROUGH,
    ("README.md", "lmfast export onnx"): WALKTHROUGH,
    ("README.md", "lmfast generate"): WALKTHROUGH,
    ("README.md", "lmfast serve"): WALKTHROUGH,
    ("README.md", "curl -s localhost:8000"): WALKTHROUGH,
    ("README.md", 'python -c "from openai'): WALKTHROUGH,
    ("README.md", "lmfast bot --console"): WALKTHROUGH,
    ("README.md", "lmfast eval data/"): WALKTHROUGH,
    ("docs/prepare.md", "python -m lmfast.prepare"): WALKTHROUGH,
    ("docs/prepare.md", "lmfast prepare --documents_train_file 'data/"): WALKTHROUGH,
    ("docs/prepare.md", "for i in 0 1; do lmfast prepare"): WALKTHROUGH,
    ("docs/prepare.md", "lmfast prepare merge"): WALKTHROUGH,
    ("docs/prepare.md", "PreparedDataset("): WALKTHROUGH,
    ("docs/train.md", "lmfast train --dataset_dir data/datasets/nietzsche"): WALKTHROUGH,
    ("docs/export.md", "lmfast export onnx"): WALKTHROUGH,
    ("docs/serving.md", "lmfast generate"): WALKTHROUGH,
    ("docs/serving.md", "Generator.load"): WALKTHROUGH,
    ("docs/serving.md", "lmfast serve"): WALKTHROUGH,
    ("docs/serving.md", "curl -s localhost:8000"): WALKTHROUGH,
    ("docs/serving.md", 'python -c "from openai'): WALKTHROUGH,
    ("docs/bot.md", "lmfast bot --console"): WALKTHROUGH,
    ("docs/evaluation.md", "lmfast eval data/"): WALKTHROUGH,
    ("docs/tokenizers.md", "# make_tokenizer.py"): WALKTHROUGH,
    ("docs/tokenizers.md", "# my_package/my_tokenizer.py"): WALKTHROUGH,
    ("docs/tokenizers.md", "python make_tokenizer.py"): WALKTHROUGH,
    ("docs/tokenizers.md", "lmfast prepare --tokenizer_cls_name my_package"): WALKTHROUGH,
    ("docs/tokenizers.md", "import my_package.my_tokenizer"): WALKTHROUGH,
    ("docs/chat-exports.md", "lmfast prepare"): CHAT_EXPORTS,
}

# RUN entries whose test runs every command they claim; any other RUN entry must claim exactly one
RUN_EVERY_MATCH = {("docs/chat-exports.md", "lmfast prepare")}  # the test asserts there are 2 and runs both

# (page, needle) -> why it cannot run in the tests on this machine
NOT_RUNNABLE: dict[tuple[str, str], str] = {
    ("README.md", "bash .ci/run"): "the CI itself (the whole suite in a fresh virtualenv); "
    "test_ci_runs_the_readme_test_command checks that it runs the README's test command",
    ("docs/contributing.md", "bash .ci/run"): "the CI itself, as in the README",
    ("docs/contributing.md", "bash scripts/install.sh "): "installs packages into the current Python; "
    ".ci/run runs the full install in a fresh virtualenv",
    ("docs/contributing.md", "bash scripts/lock.sh"): "resolves the newest releases from PyPI (network) and "
    "rewrites constraints.txt",
    ("docs/train.md", "tensorboard --logdir"): "a web server that runs until stopped; the events it shows "
    "are checked by tests/train/test_callbacks.py",
    ("docs/train.md", "SMOL_GGUF=$("): SMOLLM2
    + "tests/train/test_pretrained.py runs the same GGUF fine-tune",
    ("docs/train.md", "SMOL=$("): SMOLLM2 + "tests/models/test_gguf.py converts the same GGUF",
    ("docs/train.md", "python -m lmfast prepare --documents_train_file"): SMOLLM2
    + "tests/data/test_pretrained_tokenizers.py prepares with SmolLM2's tokenizer",
    ("docs/train.md", "lmfast train --dataset_dir data/datasets/smol"): SMOLLM2
    + "tests/train/test_pretrained.py trains LoRA on the same GGUF for a step",
    ("docs/train.md", "lmfast export onnx data/experiments/smol"): SMOLLM2
    + "tests/export/test_sources.py exports LoRA and GGUF sources of tiny models",
    ("docs/train.md", "lmfast generate data/exports/smol"): SMOLLM2 + "it needs the export above",
    ("docs/bot.md", "export TELEGRAM_BOT_TOKEN"): TELEGRAM,
    ("docs/bot.md", "lmfast bot --api_url"): TELEGRAM,
    ("docs/bot.md", "SMOL=$("): SMOLLM2 + "tests/models/test_gguf.py converts the same GGUF",
    ("docs/bot.md", "python -m lmfast.prepare --documents_format dialogs"): SMOLLM2
    + "tests/data/test_dialogs.py::test_smollm2_template_masks_equal_transformers prepares dialogs with it",
    ("docs/bot.md", "lmfast train --dataset_dir data/datasets/chat"): SMOLLM2
    + "tests/train/test_dialog_training.py fine-tunes on dialogs with a tiny model",
    ("docs/bot.md", 'lmfast serve "$SMOL"'): SMOLLM2
    + "tests/serving/test_chat.py::test_smollm2_capital_of_france_equals_transformers asks it this question",
    ("docs/bot.md", "curl -s localhost:8000/v1/chat/completions"): SMOLLM2
    + "tests/serving/test_chat.py::test_smollm2_capital_of_france_equals_transformers asks it this question",
    ("docs/bot.md", "client.chat.completions.create"): SMOLLM2
    + "tests/serving/test_chat.py streams a chat to the openai client from a tiny chat model",
    ("docs/chat-exports.md", "lmfast bot --api_url"): TELEGRAM,
    ("docs/evaluation.md", 'lmfast eval "$SMOL" --text_file'): SMOLLM2
    + "tests/evaluation/test_perplexity.py scores text files with tiny models against a transformers loop",
    ("docs/evaluation.md", 'lmfast eval "$SMOL" --tasks'): SMOLLM2
    + "tests/evaluation/test_tasks.py runs lmfast_mini_mc on a tiny model against lm-eval's own",
    ("docs/deploy.md", "lmfast prepare --documents_train_file 'corpus/"): "a SLURM job array over a shared "
    "filesystem; docs/prepare.md's two-shard example runs the same sharding and merge",
    ("docs/deploy.md", "torchrun --nnodes 2"): "two nodes of 8 GPUs; tests/train/test_ddp.py and "
    "test_fsdp.py run 2 processes with Lightning's own launcher",
    ("docs/deploy.md", "srun lmfast train"): "a SLURM batch script on two nodes of 8 GPUs; tests/train/"
    "test_ddp.py and test_fsdp.py run 2 processes with Lightning's own launcher",
    (
        "docs/deploy.md",
        "for i in 0 1 2 3; do",
    ): "four servers that run until stopped, behind a load balancer; "
    "benchmarks/bench_replicas.py starts and measures such replicas",
    ("docs/benchmarks.md", "python -m benchmarks"): BENCHMARK
    + " (tests/benchmarks/ test the suite's report and its Ctrl-C)",
    ("docs/benchmarks.md", "python benchmarks/"): BENCHMARK,
    ("docs/benchmarks.md", "pip install -e"): "installs packages (llama-cpp-python is built from source)",
    ("docs/quantization.md", "lmfast export onnx data/experiments/mine/latest"): "a user's own experiment "
    "and dataset (minutes of NumPy per SmolLM2-size export); tests/export/test_calibration.py makes a "
    "calibrated int4 export of a tiny model with the same flags",
    (
        "docs/quantization.md",
        "LLAMA_CPP_SRC=/path/to/llama.cpp python benchmarks/quant_quality.py",
    ): BENCHMARK,
}

# the project's former names for things, which a reader of today's repository cannot look up
STALE_WORDS = ("the seed", "seed's", "seed api", "seed project", "contract 3", "design.md")


def pages() -> list[str]:
    return ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]


def snippets(page: str) -> list[tuple[str, str]]:
    """(kind, text) of every bash command and python block on the page."""
    text = (REPO_ROOT / page).read_text(encoding="utf-8")
    return [("bash", c) for c in shell_commands(text)] + [
        ("python", b) for b in fenced_blocks(text, "python")
    ]


def claims(kind: str, snippet: str, needle: str) -> bool:
    return snippet.startswith(needle) if kind == "bash" else needle in snippet


def entries() -> dict[tuple[str, str], str]:
    assert not RUN.keys() & NOT_RUNNABLE.keys(), RUN.keys() & NOT_RUNNABLE.keys()
    return {**RUN, **NOT_RUNNABLE}


@pytest.mark.parametrize("page", pages())
def test_every_command_is_run_or_listed_as_not_runnable(page):
    listed = [needle for (p, needle) in entries() if p == page]
    unclaimed, doubly = [], []
    for kind, snippet in snippets(page):
        owners = [needle for needle in listed if claims(kind, snippet, needle)]
        if not owners:
            unclaimed.append(f"{kind}: {snippet[:100]}")
        elif len(owners) > 1:
            doubly.append(f"{kind}: {snippet[:60]} <- {owners}")
    assert not unclaimed, (
        f"{page}: add each to tests/test_docs.py's RUN (the test that runs it) or NOT_RUNNABLE (why it "
        f"cannot run here): {unclaimed}"
    )
    assert not doubly, f"{page}: claimed by more than one entry: {doubly}"


def test_every_entry_claims_a_command_and_names_a_real_test():
    for page, needle in entries():
        assert (REPO_ROOT / page).is_file(), f"{page}: no such page"
        claimed = sum(claims(kind, s, needle) for kind, s in snippets(page))
        assert claimed, f"{page}: nothing matches {needle!r}"
        if (page, needle) in RUN and (page, needle) not in RUN_EVERY_MATCH:
            # the test looks up one command by this needle: a second would look run and never be
            assert claimed == 1, f"{page}: {claimed} commands start with {needle!r}; a test runs only one"
    for (page, needle), test_id in RUN.items():
        path, name = test_id.split("::")
        source = (REPO_ROOT / path).read_text(encoding="utf-8")
        functions = {
            node.name: ast.get_source_segment(source, node)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef)
        }
        assert name in functions, f"{test_id}: no such test"
        body = functions[name] or ""
        mention = "README" if page == "README.md" else page.removeprefix("docs/")
        assert mention in body, f"{test_id} does not read {page}"
        assert needle in body, f"{test_id} does not look up {page}'s {needle!r}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("page", pages())
def test_links_between_pages_reach_a_file_and_a_heading(page):
    source = REPO_ROOT / page
    text = re.sub(r"```.*?```", "", source.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        if not linked.exists():
            broken.append(target)
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{page}: links to a missing file or heading: {broken}"


@pytest.mark.parametrize("page", pages())
def test_no_page_uses_the_projects_former_names(page):
    text = (REPO_ROOT / page).read_text(encoding="utf-8").lower()
    found = [word for word in STALE_WORDS if word in text]
    assert not found, (
        f"{page} says {found}: name the thing as it is today (e.g. 'the legacy /generated_texts/ API')"
    )
