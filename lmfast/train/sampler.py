"""A batch sampler that groups samples by length, shards batches across ranks and resumes mid-epoch.

The order of an epoch is a pure function of (seed, epoch), so a resumed run only needs the epoch and
the number of batches already consumed to continue exactly where it stopped (no replayed data, the
usual complaint about mid-epoch resume). NumPy only: it runs in the training process, the DataLoader
workers receive index lists.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# samples sorted by length inside windows of this many batches: similar lengths share a batch while the
# order stays random at a larger scale (as Hugging Face's LengthGroupedSampler "megabatches")
MEGABATCH_BATCHES = 50


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group_by_length: bool = True,
) -> list[np.ndarray]:
    """All batches of one epoch, for all ranks together.

    Args:
        lengths: (N,) sample lengths in tokens.
        batch_size: samples per batch; the last batch may be smaller.
        seed: run seed; with `epoch` it fully determines the order.
        epoch: epoch number (a new order each epoch).
        shuffle: random order (training) or dataset order (validation).
        group_by_length: sort by length inside windows of `MEGABATCH_BATCHES` batches, longest first.

    Returns:
        A list of int64 index arrays.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if group_by_length:
        window = batch_size * MEGABATCH_BATCHES if shuffle else n
        chunks = []
        for start in range(0, n, max(window, 1)):
            chunk = order[start : start + window]
            # stable sort keeps the random order among equal lengths
            chunks.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
        order = np.concatenate(chunks) if chunks else order
    batches = [order[i : i + batch_size].astype(np.int64) for i in range(0, n, batch_size)]
    if shuffle and group_by_length and len(batches) > 1:
        # batches of similar length would otherwise come in runs of long then short
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class ResumableBatchSampler:
    """Yields this rank's batches, one epoch per `iter()`; `resume_from()` continues mid-epoch.

    Position is one counter, the rank's global batch index (across epochs): batch g is batch
    `g % len(self)` of epoch `g // len(self)`. Lightning's own epoch number is not used, because it
    moves on when a run stops at `max_steps` mid-epoch, while the data must not.

    Every rank gets the same number of batches (DDP needs it): batch j of the epoch goes to rank
    `j % num_replicas` and the tail that cannot be split evenly is dropped.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.num_replicas = num_replicas
        self.rank = rank
        self.next_batch = 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.lengths)} samples do not make one batch of {batch_size} on each of {num_replicas} device(s)"
            )

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch; the position is kept by `next_batch` instead (see class doc)."""

    def __len__(self) -> int:
        total = -(-len(self.lengths) // self.batch_size)
        return total // self.num_replicas

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of `epoch`, in order, none skipped."""
        every = epoch_batches(
            self.lengths,
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            group_by_length=self.group_by_length,
        )
        mine = every[self.rank :: self.num_replicas]
        return mine[: len(self)]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.next_batch, len(self))
        # the next iter() starts the next epoch, however much of this one is consumed
        self.next_batch = (epoch + 1) * len(self)
        for batch in self.batches(epoch)[offset:]:
            yield batch.tolist()

    def resume_from(self, batches_consumed: int) -> None:
        """Continue after `batches_consumed` batches of this rank (counted over all epochs)."""
        self.next_batch = batches_consumed
