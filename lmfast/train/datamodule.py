"""`LMDataModule`: batches of a prepared dataset, padded per batch, sharded per rank, resumable.

Samples are read only through `lmfast.models.dataset.PreparedSplit`, which pickles as a path: each
DataLoader worker maps the corpus itself, nothing is copied. The data position (batches
consumed) is saved in every checkpoint through the datamodule's `state_dict`, so `--resume`
continues with the next unseen batch.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmfast.models.dataset import PreparedDataset, PreparedSplit
from lmfast.train.interrupt import ignore_stop_signals
from lmfast.train.sampler import ResumableBatchSampler

IGNORE_INDEX = -100  # labels never counted in the loss (padding, tokens a dialog's loss mask excludes)


class SplitSamples(Dataset):
    """Map-style view of a split: item i is sample i as an int64 tensor, with its bool loss mask
    as a second element where the split has one (dialog datasets)."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(np.asarray(self.split[i], dtype=np.int64))
        mask = self.split.sample_loss_mask(i)
        return ids if mask is None else (ids, torch.from_numpy(np.asarray(mask, dtype=np.bool_)))


@dataclass
class Collator:
    """Pads a list of samples into a batch.

    Returns a dict of (B, T) int64 tensors: `input_ids` (padding = `pad_token_id`), `attention_mask`
    (1 on real tokens) and `labels` (= input_ids, IGNORE_INDEX on padding and, for (ids, loss mask)
    samples, where the mask is 0, so neither ever counts in the loss).
    """

    pad_token_id: int
    pad_to_multiple_of: int = 1

    def __call__(
        self, samples: list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        masks = [s[1] if isinstance(s, tuple) else None for s in samples]
        samples = [s[0] if isinstance(s, tuple) else s for s in samples]
        longest = max(len(s) for s in samples)
        m = self.pad_to_multiple_of
        width = -(-longest // m) * m
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            input_ids[row, : len(sample)] = sample
            attention_mask[row, : len(sample)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        for row, mask in enumerate(masks):
            if mask is not None:
                labels[row, : len(mask)].masked_fill_(~mask, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class LMDataModule(pl.LightningDataModule):
    """Train/valid DataLoaders over a dataset directory written by `lmfast prepare`."""

    def __init__(
        self,
        dataset_dir: str | Path,
        batch_size: int,
        *,
        pad_token_id: int,
        seed: int = 0,
        num_workers: int = 0,
        group_by_length: bool = True,
        pad_to_multiple_of: int = 1,
    ) -> None:
        super().__init__()
        self.dataset = PreparedDataset(dataset_dir)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.collator = Collator(pad_token_id, pad_to_multiple_of)
        self._resume_position: int | None = None
        self._train_lengths: np.ndarray | None = None
        self._valid_lengths: np.ndarray | None = None

    @property
    def train_lengths(self) -> np.ndarray:
        if self._train_lengths is None:
            self._train_lengths = self.dataset.train.lengths()
        return self._train_lengths

    @property
    def valid_lengths(self) -> np.ndarray:
        if self._valid_lengths is None:
            self._valid_lengths = self.dataset.valid.lengths()
        return self._valid_lengths

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: PreparedSplit, sampler: ResumableBatchSampler) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            SplitSamples(split),
            batch_sampler=sampler,
            collate_fn=self.collator,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=self._generator(),
            worker_init_fn=functools.partial(_init_worker, rank=self._rank_and_world()[0]),
        )

    def _generator(self) -> torch.Generator:
        # each iter() of a DataLoader draws its workers' base seed; from its own generator, not the global
        # RNG, so an extra validation (e.g. when a run is stopped) leaves dropout's random stream untouched
        return torch.Generator().manual_seed(self.seed)

    def train_sampler(self) -> ResumableBatchSampler:
        """This rank's training batches, positioned where a resumed run left off."""
        rank, world = self._rank_and_world()
        sampler = ResumableBatchSampler(
            self.train_lengths,
            self.batch_size,
            seed=self.seed,
            shuffle=True,
            group_by_length=self.group_by_length,
            num_replicas=world,
            rank=rank,
        )
        if self._resume_position is not None:
            sampler.resume_from(self._resume_position)
            self._resume_position = None
        return sampler

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset.train, self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        # validation covers every sample: ranks take interleaved slices, uneven counts are fine here
        # (no collective runs per validation batch)
        lengths = self.valid_lengths
        indices = np.arange(len(lengths))[rank::world]
        order = indices[np.argsort(-lengths[indices], kind="stable")]  # longest first: less padding
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        return DataLoader(
            SplitSamples(self.dataset.valid),
            batch_sampler=batches,
            collate_fn=self.collator,
            num_workers=0,
            pin_memory=torch.cuda.is_available(),
            generator=self._generator(),
        )

    def state_dict(self) -> dict[str, Any]:
        """The data position saved in each checkpoint: batches this rank has trained on, over all epochs.

        Lightning's `total.processed` counter survives restarts and is incremented after each
        training step, so at any checkpoint it is exactly the number of batches consumed (the data
        loader itself has already prefetched further).
        """
        trainer = self.trainer
        if trainer is None:
            return {}
        consumed = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        rank, world = self._rank_and_world()
        return {
            "batches_consumed": int(consumed),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": world,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        for key, now in (("seed", self.seed), ("batch_size", self.batch_size)):
            if int(state_dict.get(key, now)) != now:
                raise ValueError(
                    f"--{key} {now} differs from the checkpoint's {state_dict[key]}: the data order would change"
                )
        self._resume_position = int(state_dict["batches_consumed"])


def _init_worker(worker_id: int, rank: int) -> None:
    """Workers ignore stop signals (the training process checkpoints, then ends them) and, under
    `seed_everything(workers=True)`, are seeded as Lightning's own worker_init_fn would (it is not
    added where one is set)."""
    from lightning.fabric.utilities.seed import pl_worker_init_function

    ignore_stop_signals()
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id, rank=rank)
