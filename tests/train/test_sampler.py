"""ResumableBatchSampler: every sample once per epoch, length grouping, rank shards, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from lmfast.train.sampler import ResumableBatchSampler, epoch_batches

LENGTHS = np.random.default_rng(0).integers(8, 65, size=203)


def test_epoch_covers_every_sample_once_and_changes_between_epochs():
    first = np.concatenate(epoch_batches(LENGTHS, 16, seed=1, epoch=0))
    second = np.concatenate(epoch_batches(LENGTHS, 16, seed=1, epoch=1))
    assert sorted(first.tolist()) == list(range(len(LENGTHS)))
    assert sorted(second.tolist()) == list(range(len(LENGTHS)))
    assert first.tolist() != second.tolist()
    assert first.tolist() == np.concatenate(epoch_batches(LENGTHS, 16, seed=1, epoch=0)).tolist()


def test_length_grouping_reduces_padding():
    def padded_tokens(group: bool) -> int:
        batches = epoch_batches(LENGTHS, 16, seed=3, epoch=0, group_by_length=group)
        return sum(len(b) * int(LENGTHS[b].max()) for b in batches)

    assert padded_tokens(True) < 0.9 * padded_tokens(False)


def test_ranks_get_disjoint_equal_shards():
    samplers = [ResumableBatchSampler(LENGTHS, 8, seed=5, num_replicas=3, rank=r) for r in range(3)]
    shards = [[i for batch in s for i in batch] for s in samplers]
    assert len({len(list(s)) for s in samplers}) == 1  # same number of batches on every rank
    assert all(len(list(s)) == len(s) for s in samplers)
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat))  # no sample on two ranks
    assert len(flat) >= len(LENGTHS) - 3 * 8  # only an uneven tail is dropped


def test_resume_continues_with_the_next_unseen_batch_across_epochs():
    reference = ResumableBatchSampler(LENGTHS, 16, seed=7)
    stream = [b for _ in range(3) for b in reference]  # three epochs, one iter() each
    for consumed in (0, 5, len(reference), len(reference) + 3):
        resumed = ResumableBatchSampler(LENGTHS, 16, seed=7)
        resumed.resume_from(consumed)
        replay = [b for _ in range(3) for b in resumed]
        assert replay[: len(stream) - consumed] == stream[consumed:]


def test_lightning_epoch_numbers_do_not_move_the_data():
    sampler = ResumableBatchSampler(LENGTHS, 16, seed=7)
    first = list(sampler)
    sampler.set_epoch(5)
    again = ResumableBatchSampler(LENGTHS, 16, seed=7)
    list(again)
    assert list(sampler) == list(again) != first


def test_too_few_samples_for_one_batch_per_rank_is_an_error():
    with pytest.raises(ValueError, match="do not make one batch"):
        ResumableBatchSampler(LENGTHS[:7], 8, num_replicas=2)
