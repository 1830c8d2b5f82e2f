"""Reading a prepared dataset back: memory-mapped splits, samples by index, the description."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lmfast.data import PrepareConfig, PreparedDataset
from lmfast.data.dataset import DatasetFormatError
from lmfast.data.prepare import prepare


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
