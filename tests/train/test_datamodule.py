"""Batches: padding masked out of attention and loss, workers that do not copy the corpus."""

from __future__ import annotations

import pickle

import torch

from lmfast.models.dataset import PreparedDataset
from lmfast.train.datamodule import IGNORE_INDEX, Collator, LMDataModule, SplitSamples


def test_collator_pads_and_masks_labels():
    batch = Collator(pad_token_id=99, pad_to_multiple_of=4)([torch.tensor([1, 2, 3]), torch.tensor([4])])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 99], [4, 99, 99, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3, IGNORE_INDEX], [4] + [IGNORE_INDEX] * 3]


def test_samples_pickle_as_a_path_not_the_corpus(dataset_dir):
    split = PreparedDataset(dataset_dir).train
    samples = SplitSamples(split)
    assert samples[0].dtype == torch.int64 and len(samples) == len(split)
    assert len(pickle.dumps(samples)) < 1000  # what a worker process receives
    assert split.corpus.nbytes > 100_000


def test_workers_yield_exactly_the_batches_of_the_main_process(dataset_dir):
    def batches(workers: int) -> list[torch.Tensor]:
        module = LMDataModule(dataset_dir, 32, pad_token_id=50256, seed=1, num_workers=workers)
        loader = module.train_dataloader()
        return [b["input_ids"] for _, b in zip(range(6), loader, strict=False)]

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a, b)


def test_validation_batches_cover_every_sample_once(dataset_dir):
    module = LMDataModule(dataset_dir, 16, pad_token_id=50256)
    tokens = sum(int(b["attention_mask"].sum()) for b in module.val_dataloader())
    assert tokens == int(module.valid_lengths.sum())
