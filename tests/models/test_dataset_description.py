"""`DatasetDescription`: the one reader and writer of description.json; files of older versions read."""

from __future__ import annotations

import json

import pytest

from lmfast.models.dataset import DatasetDescription, DatasetFormatError

# the shape of a description written before prompt_prefix_token_ids, dialogs and shards existed
OLD = {
    "documents_train_file": "train.txt",
    "tokenizer_cls_name": "GPT2Tokenizer",
    "vocab_size": 50257,
    "token_dtype": "uint16",
    "number_of_train_samples": 3,
    "number_of_train_tokens": 30,
    "number_of_valid_samples": 1,
    "number_of_valid_tokens": 7,
}


def test_an_old_description_reads_and_writes_back_unchanged(tmp_path):
    text = json.dumps(OLD, indent=2) + "\n"
    (tmp_path / "description.json").write_text(text)
    description = DatasetDescription.read(tmp_path)
    assert description == OLD
    assert (description.vocab_size, description.token_dtype) == (50257, "uint16")
    assert description.count("train", "tokens") == 30 and description.count("valid", "documents") == 0
    assert description.prompt_prefix_token_ids is None and not description.is_dialog
    out = tmp_path / "copy"
    out.mkdir()
    assert description.write(out).read_text() == text


def test_counts_are_written_under_their_split_keys():
    description = DatasetDescription(OLD)
    description.set_counts("valid", {"samples": 2, "documents": 5})
    assert description["number_of_valid_samples"] == 2 and description["number_of_valid_documents"] == 5
    description["prompt_prefix_token_ids"] = [1]
    description["loss_mask_file"] = "loss_mask.npy"
    assert description.prompt_prefix_token_ids == [1] and description.is_dialog


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vocab_size": True}, "'vocab_size' must be int"),
        ({"number_of_train_tokens": -1}, "must be >= 0"),
        ({"token_dtype": "float32"}, "'token_dtype' must be one of"),
        ({"vocab_size": 0}, "'vocab_size' must be positive"),
    ],
)
def test_bad_descriptions_are_one_error_naming_the_file(tmp_path, change, message):
    path = tmp_path / "description.json"
    path.write_text(json.dumps({**OLD, **change}))
    with pytest.raises(DatasetFormatError, match=message) as error:
        DatasetDescription.read(path)
    assert str(path) in str(error.value)


def test_missing_or_not_json(tmp_path):
    with pytest.raises(DatasetFormatError, match="missing"):
        DatasetDescription.read(tmp_path)
    (tmp_path / "description.json").write_text("[1]")
    with pytest.raises(DatasetFormatError, match="expected a JSON object"):
        DatasetDescription.read(tmp_path)
