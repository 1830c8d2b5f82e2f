"""Where a finished dataset goes: the first free version `<dataset>/<N>/`, or a shard's directory."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from lmfast.data import staging
from lmfast.data.errors import PrepareError
from lmfast.latest import point_latest


def _check_writable_root(root: Path) -> None:
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PrepareError(f"--datasets_root: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PrepareError(f"--datasets_root: {existing} is not writable")


def _first_free_version(dataset_dir: Path) -> int:
    taken = {int(p.name) for p in dataset_dir.iterdir() if p.name.isdigit()}
    return next(n for n in range(len(taken) + 1) if n not in taken)


def _commit(stage: staging.Staging, dataset_dir: Path) -> Path:
    """Rename the finished directory to the first free version N (another run may take N first)."""
    while True:
        final = dataset_dir / str(_first_free_version(dataset_dir))
        if final.exists():
            continue
        try:
            stage.commit(final)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        point_latest(final)
        return final


def shard_name(index: int, count: int) -> str:
    """The directory a shard is written to, beside the dataset's versions."""
    return f"shard-{index:05d}-of-{count:05d}"
