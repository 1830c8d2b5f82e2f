"""The description.json of one `prepare` run, from its config and counts (the format: `models/dataset.py`)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np

from lmfast.data.boundaries import DocumentBoundaries
from lmfast.data.config import PrepareConfig
from lmfast.data.split_writer import SplitStats
from lmfast.data.tokenizers import Tokenizer
from lmfast.models.dataset import DatasetDescription


def _description(
    config: PrepareConfig,
    tokenizer: Tokenizer,
    boundaries: DocumentBoundaries,
    stats: dict[str, SplitStats],
    dtype: np.dtype,
    engine_name: str,
    kernel_backend: str,
    started: float,
) -> DatasetDescription:
    from lmfast import __version__

    description = DatasetDescription(config.to_dict())
    for name, split in stats.items():
        counts = {"samples": split.samples, "tokens": split.tokens, "documents": split.documents}
        description.set_counts(name, {**counts, "forced_cuts": split.forced_cuts})
    description.update(
        tokenizer_name=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        **boundaries.description(),
        pad_token_id=tokenizer.pad_token_id,
        token_dtype=dtype.name,
        tokenizer_engine_used=engine_name,
        kernel_backend_used=kernel_backend,
        lmfast_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wall_time_s=round(time.perf_counter() - started, 3),
    )
    return description
