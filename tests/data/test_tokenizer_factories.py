"""`--tokenizer_cls_name module:factory` as docs/tokenizers.md shows it, and `prepare(**flags)` from Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmfast.data.prepare import PrepareConfig, PrepareError, prepare
from lmfast.data.tokenizers import GPT2_DIR, UnknownTokenizerError, load_tokenizer
from lmfast.models.dataset import PreparedDataset

DELIMITER = "[END_OF_DOCUMENT]"
DOCUMENTS = f"first document\n{DELIMITER}\nsecond document, a little longer than the first\n{DELIMITER}\n"

FACTORY = """
from tokenizers import Tokenizer as HFTokenizer
from lmfast.data.tokenizers import Tokenizer, byte_level_bpe, _with_special

def good():
    backend = _with_special(byte_level_bpe("{gpt2}/vocab.json", "{gpt2}/merges.txt"), "<|endoftext|>")
    return Tokenizer(name="Good", backend=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")

def broken():
    return Tokenizer(name="Broken", backend=HFTokenizer.from_file("no/such/tokenizer.json"))

not_callable = 42
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's directory: a package with tokenizer factories next to a documents file."""
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "my_tokenizer.py").write_text(FACTORY.format(gpt2=GPT2_DIR.as_posix()), encoding="utf-8")
    (tmp_path / "docs.txt").write_text(DOCUMENTS, encoding="utf-8")
    return tmp_path


def console_script() -> Path:
    """The installed `lmfast` entry point (its sys.path[0] is its bin dir, not the current dir)."""
    script = Path(sys.executable).parent / "lmfast"
    if not script.is_file():
        pytest.skip(f"no `lmfast` console script beside {sys.executable} (pip install -e . makes one)")
    return script


def run_prepare(project: Path, spec: str) -> subprocess.CompletedProcess[str]:
    argv = [str(console_script()), "prepare", "--quiet", "--documents_train_file", "docs.txt"]
    argv += ["--documents_valid_file", "docs.txt", "--end_of_document", DELIMITER]
    argv += ["--tokenizer_cls_name", spec, "--max_sample_length", "16", "--min_sample_length", "2"]
    argv += ["--datasets_root", "datasets", "--dataset_name", "mine"]
    return subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_console_script_imports_a_factory_from_the_current_directory(project):
    result = run_prepare(project, "my_package.my_tokenizer:good")
    assert result.returncode == 0, result.stderr
    directory = project / result.stdout.strip()
    assert directory == project / "datasets" / "mine" / "0"
    assert PreparedDataset(directory).description["tokenizer_cls_name"] == "my_package.my_tokenizer:good"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("my_package.my_tokenizer:broken", ["factory 'my_package.my_tokenizer:broken' failed", "Exception"]),
        ("my_package.my_tokenizer:not_callable", ["is a int, not a callable factory"]),
        ("my_package.nothing_here:good", ["cannot import", "my_package.nothing_here"]),
    ],
)
def test_a_failing_factory_is_one_line_and_exit_2(project, spec, needles):
    result = run_prepare(project, spec)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmfast prepare: error: --tokenizer_cls_name: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == "" and not (project / "datasets").exists()


def test_a_module_failing_on_import_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('no\\nway')\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UnknownTokenizerError, match=r"importing 'explodes_on_import' failed: RuntimeError: no way"
    ):
        load_tokenizer("explodes_on_import:factory")


def test_prepare_takes_keyword_arguments_or_a_config(tmp_path):
    documents = tmp_path / "docs.txt"
    documents.write_text(DOCUMENTS, encoding="utf-8")
    flags = dict(
        documents_train_file=documents,
        documents_valid_file=documents,
        end_of_document=DELIMITER,
        tokenizer_cls_name="GPT2Tokenizer",
        max_sample_length=16,
        min_sample_length=2,
        datasets_root=tmp_path / "datasets",
    )
    by_keywords = prepare(**flags)
    by_config = prepare(PrepareConfig(**flags))
    assert (by_keywords.name, by_config.name) == ("0", "1")
    assert len(PreparedDataset(by_keywords).train) == len(PreparedDataset(by_config).train) == 2
    with pytest.raises(TypeError, match="not both"):
        prepare(PrepareConfig(**flags), dataset_name="x")
    with pytest.raises(TypeError, match="unexpected keyword"):
        prepare(**flags, no_such_flag=1)
    with pytest.raises(PrepareError, match="--min_sample_length"):
        prepare(**{**flags, "min_sample_length": 99})
