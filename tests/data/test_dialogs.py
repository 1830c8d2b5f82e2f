"""Dialog datasets (`--documents_format dialogs`): ids and loss masks against transformers' own
`apply_chat_template(..., return_assistant_tokens_mask=True)`, cutting at turn boundaries, bad lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.data.dialogs import cut_at_turns, token_mask
from lmfast.data.prepare import PrepareConfig, PrepareError, prepare
from lmfast.models.dataset import PreparedDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
DIALOGS = REPO_ROOT / "data" / "documents" / "dialogs"
TEMPLATE = DIALOGS / "chat_template.jinja"

# The bundled template with {% generation %} around what an assistant turn trains on: transformers marks
# exactly those characters, lmfast finds them without the tags (generation prompt -> end of turn).
TAGGED_TEMPLATE = (
    "{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\\n' }}{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
# SmolLM2-135M-Instruct's own template, tagged the same way
SMOLLM2_TAGGED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def conversations(path: Path) -> list[list[dict[str, str]]]:
    return [
        json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def dialog_config(root: Path, **overrides) -> PrepareConfig:
    values = dict(
        documents_train_file=DIALOGS / "train.jsonl",
        documents_valid_file=DIALOGS / "valid.jsonl",
        documents_format="dialogs",
        tokenizer_cls_name="GPT2Tokenizer",
        chat_template=str(TEMPLATE),
        max_sample_length=1024,
        min_sample_length=1,
        datasets_root=root,
        dataset_name="dialogs",
    )
    values.update(overrides)
    return PrepareConfig(**values)


def dataset_tokenizer(tokenizer_dir: Path):
    """The dataset's own tokenizer files, loaded by transformers (once per check: loading dominates)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


def transformers_reference(tokenizer, messages, template: str) -> tuple[list[int], list[int], str]:
    """(ids, assistant mask, text) as transformers computes them with `tokenizer`."""
    out = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    return list(out["input_ids"]), list(out["assistant_masks"]), text


def check_against_transformers(dataset_dir: Path, split: str, path: Path, tagged: str) -> None:
    ds = PreparedDataset(dataset_dir)
    part = ds.split(split)
    chats = conversations(path)
    assert len(part) == len(chats)  # no sample cut or dropped at this --max_sample_length
    untagged = (dataset_dir / "tokenizer" / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer = dataset_tokenizer(dataset_dir / "tokenizer")
    for i, messages in enumerate(chats):
        ids, mask, text = transformers_reference(tokenizer, messages, tagged)
        _, _, plain_text = transformers_reference(tokenizer, messages, untagged)
        assert text == plain_text  # the tags change nothing but the mask
        assert part[i].tolist() == ids
        assert part.sample_loss_mask(i).tolist() == mask, (i, messages)


def test_ids_and_masks_equal_transformers_apply_chat_template(tmp_path):
    dataset_dir = prepare(dialog_config(tmp_path))
    check_against_transformers(dataset_dir, "train", DIALOGS / "train.jsonl", TAGGED_TEMPLATE)
    check_against_transformers(dataset_dir, "valid", DIALOGS / "valid.jsonl", TAGGED_TEMPLATE)
    description = json.loads((dataset_dir / "description.json").read_text())
    mask = np.load(dataset_dir / "train" / "loss_mask.npy")
    corpus = np.load(dataset_dir / "train" / "corpus.npy")
    assert mask.dtype == np.uint8 and mask.shape == corpus.shape
    assert description["documents_format"] == "dialogs" and description["train_on"] == "assistant"
    assert description["number_of_train_trained_tokens"] == int(mask.sum())
    assert 0 < mask.sum() < len(mask)
    assert description["number_of_train_conversations"] == len(conversations(DIALOGS / "train.jsonl"))
    # the template travels with the dataset: transformers loads it from tokenizer/
    from transformers import PreTrainedTokenizerFast

    loaded = PreTrainedTokenizerFast.from_pretrained(dataset_dir / "tokenizer")
    assert loaded.chat_template == TEMPLATE.read_text(encoding="utf-8")


def test_a_template_with_generation_tags_gives_the_same_masks(tmp_path):
    tagged_file = tmp_path / "tagged.jinja"
    tagged_file.write_text(TAGGED_TEMPLATE, encoding="utf-8")
    plain = PreparedDataset(prepare(dialog_config(tmp_path / "a")))
    tagged = PreparedDataset(prepare(dialog_config(tmp_path / "b", chat_template=str(tagged_file))))
    assert np.array_equal(plain.train.corpus, tagged.train.corpus)
    assert np.array_equal(plain.train.loss_mask, tagged.train.loss_mask)


def test_train_on_all_masks_every_token(tmp_path):
    ds = PreparedDataset(prepare(dialog_config(tmp_path, train_on="all")))
    assert ds.train.loss_mask.all() and ds.description["number_of_train_trained_tokens"] == len(
        ds.train.corpus
    )


def test_long_conversations_are_cut_before_user_turns(tmp_path):
    turns = []
    for k in range(12):
        turns += [
            {"role": "user", "content": f"Question number {k}: what is {k} plus {k}?"},
            {"role": "assistant", "content": f"{k} plus {k} is {2 * k}."},
        ]
    train = tmp_path / "long.jsonl"
    train.write_text(json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    full = PreparedDataset(prepare(dialog_config(tmp_path / "full", documents_train_file=train)))
    cut = PreparedDataset(
        prepare(dialog_config(tmp_path / "cut", documents_train_file=train, max_sample_length=64))
    )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(cut.directory / "tokenizer" / "tokenizer.json"))
    assert len(full.train) == 1 and len(cut.train) > 3
    assert all(len(cut.train[i]) <= 64 for i in range(len(cut.train)))
    texts = [
        tokenizer.decode(cut.train[i].tolist(), skip_special_tokens=False) for i in range(len(cut.train))
    ]
    assert all(text.startswith("<|user|>\nQuestion number") for text in texts)
    # nothing lost: the samples are the whole conversation, in order, masks included
    assert np.array_equal(cut.train.corpus, full.train.corpus)
    assert np.array_equal(cut.train.loss_mask, full.train.loss_mask)
    assert cut.description["number_of_train_conversations_cut"] == 1


def test_cut_at_turns_truncates_one_exchange_longer_than_the_limit():
    assert cut_at_turns(10, [4, 7], 5) == ([(0, 4), (4, 7), (7, 10)], 0)
    assert cut_at_turns(10, [], 10) == ([(0, 10)], 0)
    # exchange [0, 8) does not fit: truncated at 5, tokens 5..7 dropped, the next exchange starts at 8
    assert cut_at_turns(12, [8], 5) == ([(0, 5), (8, 12)], 3)


def reference_token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """transformers' loop in apply_chat_template (return_assistant_tokens_mask), verbatim in spirit."""
    mask, k = [0] * len(offsets), 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0]:
            mask[t] = 1
    return mask


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 4), max_size=30),
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6)), max_size=6),
)
def test_token_mask_agrees_with_transformers_loop(widths, gaps):
    offsets, position = [], 0
    for width in widths:
        offsets.append((position, position + width))
        position += width
    spans, position = [], 0
    for gap, length in gaps:
        spans.append((position + gap, position + gap + length))
        position += gap + length
    got = token_mask(np.array(offsets, dtype=np.int64).reshape(-1, 2), spans).tolist()
    assert got == reference_token_mask(offsets, spans)


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmfast.prepare", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli_args(train: Path, root: Path, *extra: str) -> list[str]:
    return [
        "--documents_format", "dialogs",
        "--documents_train_file", str(train),
        "--documents_valid_file", str(DIALOGS / "valid.jsonl"),
        "--tokenizer_cls_name", "GPT2Tokenizer",
        "--chat_template", str(TEMPLATE),
        "--max_sample_length", "256",
        "--datasets_root", str(root),
        "--dataset_name", "bad",
        *extra,
    ]  # fmt: skip


GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
)


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"messages": [{"role": "user", "content": "Hi"}', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"conversation": []}', '"messages" must be a non-empty list'),
        ('{"messages": [{"role": "user", "content": 3}]}', 'messages[0]["content"] must be a string'),
        ('{"messages": ["hello"]}', "messages[0] is str"),
    ],
)
def test_a_bad_line_is_one_error_naming_file_and_line_and_nothing_is_written(tmp_path, bad_line, problem):
    train = tmp_path / "train.jsonl"
    train.write_text(f"{GOOD}\n\n{GOOD}\n{bad_line}\n{GOOD}\n", encoding="utf-8")
    root = tmp_path / "datasets"
    result = run_prepare(*cli_args(train, root))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    assert f"--documents_train_file: {train} line 4: " in lines[0] and problem in lines[0]
    assert not root.exists()


def test_bad_lines_skip_counts_them(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_bytes(f"{GOOD}\nnot json\n{GOOD}\n".encode() + b'{"messages": "\xff"}\n')
    root = tmp_path / "datasets"
    result = run_prepare(*cli_args(train, root, "--bad_lines", "skip"))
    assert result.returncode == 0, result.stderr
    description = json.loads((root / "bad" / "0" / "description.json").read_text())
    assert description["number_of_train_bad_lines"] == 2
    assert description["number_of_train_conversations"] == description["number_of_train_samples"] == 2
    assert "skipped 2 bad line(s)" in result.stderr


def test_invalid_utf8_names_the_line(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_bytes(f"{GOOD}\n".encode() + b'{"messages": "\xff"}\n')
    result = run_prepare(*cli_args(train, tmp_path / "datasets"))
    assert result.returncode == 2 and "line 2: invalid UTF-8" in result.stderr


def test_a_tokenizer_without_chat_template_needs_the_flag(tmp_path):
    args = cli_args(DIALOGS / "train.jsonl", tmp_path / "datasets")
    i = args.index("--chat_template")
    result = run_prepare(*(args[:i] + args[i + 2 :]))
    assert result.returncode == 2
    assert "--chat_template: tokenizer 'GPT2Tokenizer' has no chat template" in result.stderr
    assert not (tmp_path / "datasets").exists()


def test_text_format_still_needs_its_delimiter(tmp_path):
    with pytest.raises(PrepareError, match="--end_of_document"):
        dialog_config(tmp_path, documents_format="text", documents_train_file=tmp_path / "docs.txt")


@pytest.mark.slow
def test_smollm2_template_masks_equal_transformers(tmp_path, smollm2_dir):
    """The real SmolLM2-135M-Instruct tokenizer and template (default system prompt, no generation tags)."""
    dataset_dir = prepare(dialog_config(tmp_path, tokenizer_cls_name=str(smollm2_dir), chat_template=""))
    assert (dataset_dir / "tokenizer" / "chat_template.jinja").read_text() == (
        smollm2_dir / "chat_template.jinja"
    ).read_text()
    check_against_transformers(dataset_dir, "valid", DIALOGS / "valid.jsonl", SMOLLM2_TAGGED)
    check_against_transformers(dataset_dir, "train", DIALOGS / "train.jsonl", SMOLLM2_TAGGED)
