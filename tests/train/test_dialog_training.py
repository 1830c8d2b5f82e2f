"""Training on a dialog dataset: the loss covers the assistant tokens only (never padding nor the
user turns), the logged token count is the trained tokens, and validation samples use the chat template."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmfast.models.dataset import PreparedDataset
from lmfast.train.datamodule import IGNORE_INDEX, Collator, SplitSamples
from lmfast.train.module import LMModule

from .conftest import read_scalars

REPO_ROOT = Path(__file__).resolve().parents[2]
DIALOGS = REPO_ROOT / "data" / "documents" / "dialogs"


def prepare_dialogs(root: Path, tokenizer: str, max_len: int, *extra: str) -> Path:
    command = [
        sys.executable, "-m", "lmfast.prepare",
        "--documents_format", "dialogs",
        "--documents_train_file", str(DIALOGS / "train.jsonl"),
        "--documents_valid_file", str(DIALOGS / "valid.jsonl"),
        "--tokenizer_cls_name", tokenizer,
        "--max_sample_length", str(max_len),
        "--min_sample_length", "8",
        "--datasets_root", str(root),
        "--dataset_name", "dialogs",
        *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dialog_dataset_dir(tmp_path_factory) -> Path:
    """The bundled dialogs, GPT-2 tokenizer, the bundled chat template, by the real `lmfast.prepare`."""
    return prepare_dialogs(
        tmp_path_factory.mktemp("dialogs"),
        "GPT2Tokenizer",
        256,
        "--chat_template",
        str(DIALOGS / "chat_template.jinja"),
    )


def test_collator_ignores_labels_outside_the_loss_mask_and_on_padding():
    samples = [
        (torch.tensor([1, 2, 3, 4]), torch.tensor([False, False, True, True])),
        (torch.tensor([5, 6]), torch.tensor([False, True])),
    ]
    batch = Collator(pad_token_id=0)(samples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 3, 4],
        [IGNORE_INDEX, 6] + [IGNORE_INDEX] * 2,
    ]


def reference_loss(model, split, indices: list[int]) -> tuple[float, int]:
    """Mean next-token cross-entropy over exactly the tokens whose loss_mask.npy entry is 1, sample by sample
    (no padding, no collator): what the training loss must equal."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in indices:
            ids = torch.tensor(np.asarray(split[i], dtype=np.int64))[None]
            mask = np.asarray(split.sample_loss_mask(i), dtype=bool)
            logits = model(input_ids=ids).logits[0].float()
            positions = [t for t in range(1, ids.shape[1]) if mask[t]]
            total += F.cross_entropy(
                logits[[t - 1 for t in positions]], ids[0, positions], reduction="sum"
            ).item()
            count += len(positions)
    return total / count, count


def check_loss_is_assistant_only(model, dataset_dir: Path, indices: list[int]) -> None:
    split = PreparedDataset(dataset_dir).train
    samples = SplitSamples(split)
    batch = Collator(pad_token_id=0)([samples[i] for i in indices])
    module = LMModule(model)
    module.eval()
    batch = module.on_before_batch_transfer(batch, 0)
    with torch.no_grad():
        losses = module._losses(batch)
    expected, count = reference_loss(model, split, indices)
    assert int(losses["count"]) == count == batch["num_trained_tokens"]
    assert count < batch["num_tokens"] - len(indices)  # the user turns and headers are not counted
    assert float(losses["lm"]) == pytest.approx(expected, rel=1e-4)


def test_the_loss_covers_exactly_the_assistant_tokens(dialog_dataset_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257)).eval()
    check_loss_is_assistant_only(model, dialog_dataset_dir, [0, 5, 10, 28])  # different lengths: padding too


@pytest.mark.slow
def test_one_epoch_logs_the_trained_tokens_and_chat_samples(dialog_dataset_dir, tmp_path):
    from lmfast.train.cli import main

    ds = PreparedDataset(dialog_dataset_dir)
    batch_size = 8
    steps = -(-len(ds.train) // batch_size)  # one epoch
    argv = [
        "--dataset_dir", str(dialog_dataset_dir), "--model", "gpt2-tiny",
        "--experiments_root", str(tmp_path), "--experiment_name", "chat", "--num_workers", "0",
        "--batch_size", str(batch_size), "--learning_rate", "3e-3", "--max_steps", str(steps),
        "--log_every_n_steps", str(steps), "--limit_val_batches", "1",
        "--generation_max_new_tokens", "8", "--num_generated_samples", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    experiment = tmp_path / "chat" / "0"
    # every sample once; a sample's first token is never a target, and none starts inside an answer
    assert all(ds.train.sample_loss_mask(i)[0] == 0 for i in range(len(ds.train)))
    trained = ds.description["number_of_train_trained_tokens"]
    assert read_scalars(experiment, "train/trained_tokens")[steps - 1] == trained
    log_text = (experiment / "logs" / "train.log").read_text(encoding="utf-8")
    assert f"trained tokens {trained}" in log_text
    records = [json.loads(line) for line in (experiment / "generated.txt").read_text().splitlines()]
    assert records and all(
        r["prompt"].startswith("<|user|>\n") and r["prompt"].endswith("<|endoftext|>\n<|assistant|>\n")
        for r in records
    )
    assert (experiment / "hf" / "chat_template.jinja").read_text() == (
        DIALOGS / "chat_template.jinja"
    ).read_text()


@pytest.mark.slow
def test_fine_tuning_smollm2_on_dialogs(smollm2_dir, tmp_path):
    """The real SmolLM2-135M-Instruct, its own chat template: a few steps of fine-tuning, assistant-only loss."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from lmfast.train.cli import main

    dataset_dir = prepare_dialogs(tmp_path / "datasets", str(smollm2_dir), 128)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    check_loss_is_assistant_only(model, dataset_dir, [0, 3, 9])
    del model
    argv = [
        "--dataset_dir", str(dataset_dir), "--model", str(smollm2_dir),
        "--experiments_root", str(tmp_path / "experiments"), "--experiment_name", "smol", "--num_workers", "0",
        "--batch_size", "2", "--learning_rate", "1e-5", "--max_steps", "2", "--log_every_n_steps", "1",
        "--limit_val_batches", "1", "--generation_max_new_tokens", "4", "--num_generated_samples", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    experiment = tmp_path / "experiments" / "smol" / "0"
    assert "trained tokens" in (experiment / "logs" / "train.log").read_text(encoding="utf-8")
    record = json.loads((experiment / "generated.txt").read_text().splitlines()[0])
    assert record["prompt"].startswith("<|im_start|>system\n")
    assert record["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert (experiment / "hf" / "chat_template.jinja").is_file()
