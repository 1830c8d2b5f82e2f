"""`lmfast prepare merge`: the shards of a sharded prepare -> one ordinary dataset.

Shard I of N (`--num_shards N --shard_index I`) holds a contiguous run of the sorted input files
(`inputs.shard_slice`), and no sample crosses a file, so the single-machine dataset is the shards'
arrays concatenated in shard order, each shard's start positions shifted by the tokens before
it. The merge streams every array once into the new dataset (nothing else copies token data) and
writes the description a single run would have written (plus `merged_from`); training reads the
result like any dataset. Shards are checked first: one run (same flags and inputs), every index
present once, the same tokenizer, arrays consistent with their descriptions, and the full
`PreparedDataset.verify()` that training runs (every id, every start position, the tokenizer).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lmfast.data import staging
from lmfast.data.errors import PrepareError
from lmfast.data.npy_writer import NpyAppender
from lmfast.data.prepare import PrepareConfig, _commit
from lmfast.models.dataset import (
    DESCRIPTION_FILE,
    SPLITS,
    DatasetDescription,
    DatasetFormatError,
    PreparedDataset,
    PreparedSplit,
    split_key,
)

logger = logging.getLogger(__name__)

COPY_ITEMS = 1 << 24  # ids copied at a time (bounded memory whatever the shard size)
# keys that differ between shards of one run, or between a shard and the merged dataset
_PER_RUN = {"shard_index", "created_at", "wall_time_s", "input_files", "tokenizer_engine_used"}
_COUNTS = ("samples", "tokens", "documents", "forced_cuts")


@dataclass
class MergeConfig:
    """Join the shards of `lmfast prepare --num_shards N` into the next dataset version."""

    shards: list[Path] = field(
        metadata={"help": "The shard directories (<root>/<name>/shard-*-of-N), all N of them."}
    )
    remove_shards: bool = field(
        default=False, metadata={"help": "Delete the shard directories once the merged dataset is written."}
    )


def _load_shards(paths: list[Path]) -> list[tuple[Path, DatasetDescription]]:
    """The shards in shard order, each with its description, after every consistency check."""
    if not paths:
        raise PrepareError("shards", "give the shard directories to merge")
    shards = []
    for path in paths:
        if not (path / DESCRIPTION_FILE).is_file():
            raise PrepareError(f"shards: {path} is not a shard directory (no description.json)")
        try:
            description = DatasetDescription.read(path)
        except DatasetFormatError as error:
            raise PrepareError(f"shards: {error}") from None
        if description.get("num_shards", 1) < 2:
            raise PrepareError(f"shards: {path} is not a shard (made without --num_shards)")
        shards.append((path, description))
    count = shards[0][1]["num_shards"]
    indices = sorted(d["shard_index"] for _, d in shards)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        doubled = sorted({i for i in indices if indices.count(i) > 1})
        raise PrepareError(
            f"shards: {count} shards expected (0..{count - 1}); "
            + (f"missing {missing}" if missing else f"given twice {doubled}")
        )
    shards.sort(key=lambda item: item[1]["shard_index"])
    reference_path, reference = shards[0]
    fields = {f.name for f in dataclasses.fields(PrepareConfig)} - _PER_RUN
    for path, description in shards[1:]:
        for key in sorted(fields | {"shard_inputs_sha256", "token_dtype", "vocab_size"}):
            if description.get(key) != reference.get(key):
                raise PrepareError(
                    f"shards: {path} is from another run than {reference_path} ({key}: "
                    f"{description.get(key)!r} != {reference.get(key)!r})"
                )
        if _tree_bytes(path / "tokenizer") != _tree_bytes(reference_path / "tokenizer"):
            raise PrepareError(f"shards: {path}/tokenizer differs from {reference_path}/tokenizer")
    parents = {path.resolve().parent for path, _ in shards}
    if len(parents) != 1:
        raise PrepareError("shards: the shards must lie in one dataset directory (<root>/<name>/)")
    for path, description in shards:
        for split in SPLITS:
            try:
                PreparedSplit(path / split).check(
                    description.token_dtype,
                    description.count(split, "samples"),
                    description.count(split, "tokens"),
                )
            except DatasetFormatError as error:
                raise PrepareError(f"shards: {error}") from None
    for path, _ in shards:  # the full check train runs (ids, start positions, tokenizer), before any write
        try:
            PreparedDataset(path).verify()
        except DatasetFormatError as error:
            raise PrepareError(f"shards: {error}") from None
    return shards


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def _merge_split(
    shards: list[tuple[Path, DatasetDescription]], split: str, out_dir: Path, dtype: np.dtype
) -> None:
    """Stream the shards' arrays into `out_dir`, once, shifting each shard's start positions."""
    out_dir.mkdir()
    with (
        NpyAppender(out_dir / "corpus.npy", dtype) as corpus,
        NpyAppender(out_dir / "sample_start_positions.npy", np.int64) as starts,
    ):
        for path, _ in shards:
            part = PreparedSplit(path / split)
            offset = corpus.length
            for begin in range(0, len(part.corpus), COPY_ITEMS):
                corpus.append(np.asarray(part.corpus[begin : begin + COPY_ITEMS]))
            for begin in range(0, len(part.starts), COPY_ITEMS):
                starts.append(np.asarray(part.starts[begin : begin + COPY_ITEMS]) + offset)


def _merged_description(shards: list[tuple[Path, DatasetDescription]], started: float) -> DatasetDescription:
    """What one run over all inputs would have written (its key order too), plus `merged_from`."""
    descriptions = [d for _, d in shards]
    merged = DatasetDescription(descriptions[0])
    merged.pop("shard_inputs_sha256", None)
    merged.update(num_shards=1, shard_index=0)
    for split in SPLITS:
        for what in _COUNTS:
            merged[split_key(split, what)] = sum(d.count(split, what) for d in descriptions)
    records = [r for d in descriptions for r in d.get("input_files", [])]
    merged["input_files"] = [r for split in SPLITS for r in records if r["split"] == split]
    engines = list(dict.fromkeys(d["tokenizer_engine_used"] for d in descriptions))
    merged["tokenizer_engine_used"] = ",".join(engines)
    merged["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    merged["wall_time_s"] = round(time.perf_counter() - started, 3)
    merged["merged_from"] = [path.name for path, _ in shards]
    return merged


def merge(config: MergeConfig) -> Path:
    """Write the merged dataset as the next version beside the shards and return its directory.

    Raises:
        PrepareError: the shards are incomplete, from different runs, or damaged; nothing is written.
    """
    started = time.perf_counter()
    shards = _load_shards([Path(p) for p in config.shards])
    for split in SPLITS:
        if sum(d.count(split, "samples") for _, d in shards) == 0:
            raise PrepareError(f"shards: the {split} split of all shards together has no samples")
    dataset_dir = shards[0][0].parent  # as given, so the printed path reads like prepare's
    staging.remove_stale(dataset_dir)
    stage = staging.Staging(dataset_dir)
    try:
        dtype = np.dtype(shards[0][1]["token_dtype"])
        for split in SPLITS:
            _merge_split(shards, split, stage.directory / split, dtype)
        shutil.copytree(shards[0][0] / "tokenizer", stage.directory / "tokenizer")
        description = _merged_description(shards, started)
        description.write(stage.directory)
        final = _commit(stage, dataset_dir)
    except BaseException as error:
        stage.discard()
        if isinstance(error, OSError):
            raise PrepareError(f"shards: cannot write the merged dataset in {dataset_dir}: {error}") from None
        raise
    if config.remove_shards:
        for path, _ in shards:
            shutil.rmtree(path)
    logger.info("merged %d shards into %s in %.2f s", len(shards), final, time.perf_counter() - started)
    return final
