"""Reading a prepared dataset back: memory-mapped splits, samples by index, the description."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from lmfast.data import PrepareConfig, PreparedDataset
from lmfast.data.prepare import prepare
from lmfast.models.dataset import DatasetFormatError


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, nietzsche_dir):
    config = PrepareConfig(
        documents_train_file=nietzsche_dir / "valid.txt",
        documents_valid_file=nietzsche_dir / "valid.txt",
        end_of_document="[END_OF_DOCUMENT]",
        tokenizer_cls_name="GPT2Tokenizer",
        max_sample_length=32,
        min_sample_length=4,
        datasets_root=tmp_path_factory.mktemp("datasets"),
    )
    return prepare(config)


def test_samples_by_index_match_the_arrays(dataset_dir):
    dataset = PreparedDataset(dataset_dir)
    corpus = np.load(dataset_dir / "train" / "corpus.npy")
    starts = np.load(dataset_dir / "train" / "sample_start_positions.npy")
    assert len(dataset) == len(dataset.train) == len(starts) == dataset.description["number_of_train_samples"]
    assert isinstance(dataset.train.corpus, np.memmap)
    ends = [*starts[1:].tolist(), len(corpus)]
    for i in (0, 1, len(starts) // 2, len(starts) - 1):
        np.testing.assert_array_equal(dataset[i], corpus[starts[i] : ends[i]])
    np.testing.assert_array_equal(dataset.train[-1], corpus[starts[-1] :])
    assert dataset.train.lengths().sum() == len(corpus)
    assert 4 <= dataset.train.lengths().min() and dataset.train.lengths().max() <= 32
    with pytest.raises(IndexError):
        dataset.train[len(starts)]


def test_pickles_without_the_memory_maps(dataset_dir):
    split = PreparedDataset(dataset_dir).valid
    _ = split[0]
    clone = pickle.loads(pickle.dumps(split))
    np.testing.assert_array_equal(clone[0], split[0])


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetFormatError, match="description.json"):
        PreparedDataset(tmp_path)


def _copy(dataset_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(dataset_dir, tmp_path / "copy"))


def _edit_description(directory, edit):
    path = directory / "description.json"
    description = json.loads(path.read_text())
    path.write_text(json.dumps(edit(description)))


DAMAGE = {
    "corpus header": (
        lambda d: _overwrite(d / "train" / "corpus.npy", 0, b"\x00" * 16),
        "not a readable .npy",
    ),
    "corpus truncated": (
        lambda d: os.truncate(d / "train" / "corpus.npy", 200),
        "not a readable .npy|tokens on disk",
    ),
    "corpus empty": (lambda d: os.truncate(d / "train" / "corpus.npy", 0), "not a readable .npy"),
    "starts random bytes": (
        lambda d: (d / "valid" / "sample_start_positions.npy").write_bytes(os.urandom(300)),
        "not a readable .npy",
    ),
    "description a list": (lambda d: (d / "description.json").write_text("[1, 2]"), "expected a JSON object"),
    "description bad JSON": (lambda d: (d / "description.json").write_text("{"), "invalid JSON"),
    "description wrong type": (
        lambda d: _edit_description(d, lambda x: {**x, "vocab_size": "50257"}),
        "'vocab_size' must be int",
    ),
    "description missing key": (
        lambda d: _edit_description(d, lambda x: {k: v for k, v in x.items() if k != "token_dtype"}),
        "'token_dtype' must be str",
    ),
    "description lies about the length": (
        lambda d: _edit_description(d, lambda x: {**x, "number_of_train_tokens": 10**15}),
        "description.json says",
    ),
    "start past the corpus end": (lambda d: _patch_last_start(d, 2**60), "stay below the corpus length"),
    "wrong dtype": (lambda d: _edit_description(d, lambda x: {**x, "token_dtype": "int32"}), "dtype uint16"),
}


def _overwrite(path, offset, data):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def _patch_last_start(directory, value):
    path = directory / "train" / "sample_start_positions.npy"
    starts = np.load(path)
    starts[-1] = value
    np.save(path, starts)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_found_on_open(dataset_dir, tmp_path, damage):
    directory = _copy(dataset_dir, tmp_path)
    apply, message = DAMAGE[damage]
    apply(directory)
    with pytest.raises(DatasetFormatError, match=message) as caught:
        PreparedDataset(directory)
    assert "\n" not in str(caught.value)


def test_verify_passes_on_a_real_dataset(dataset_dir):
    dataset = PreparedDataset(dataset_dir)
    assert dataset.verify() is dataset


def test_verify_finds_ids_beyond_the_vocabulary(dataset_dir, tmp_path):
    directory = _copy(dataset_dir, tmp_path)
    corpus = np.load(directory / "valid" / "corpus.npy", mmap_mode="r+")
    corpus[7] = 60000
    corpus.flush()
    del corpus
    dataset = PreparedDataset(directory)  # cheap open does not read every id
    with pytest.raises(DatasetFormatError, match="token id 60000 at position 7 is outside the vocabulary"):
        dataset.verify()


def test_verify_finds_unsorted_start_positions(dataset_dir, tmp_path):
    directory = _copy(dataset_dir, tmp_path)
    path = directory / "train" / "sample_start_positions.npy"
    starts = np.load(path)
    starts[3] = starts[2]
    np.save(path, starts)
    with pytest.raises(DatasetFormatError, match="not strictly increasing at sample 3"):
        PreparedDataset(directory).verify()


def test_verify_finds_a_corrupt_tokenizer(dataset_dir, tmp_path):
    directory = _copy(dataset_dir, tmp_path)
    (directory / "tokenizer" / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(DatasetFormatError, match="not a Hugging Face tokenizer.json") as caught:
        PreparedDataset(directory).verify()
    assert "\n" not in str(caught.value)
