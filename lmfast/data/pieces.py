"""Input files -> piece batches, tagged per piece with its file and document, joined up to a window."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lmfast.data import documents, inputs, records
from lmfast.data.config import PrepareConfig


def iter_input_pieces(
    file: inputs.InputFile, flag: str, config: PrepareConfig, splittable: bool
) -> Iterator[documents.PieceBatch]:
    """The documents of one input file as piece batches, whatever its format."""
    window = max(64, int(config.window_mb * (1 << 20)))
    backend = config.kernel_backend
    if file.format == "jsonl":
        return records.iter_jsonl(
            file.path, file.compression, config.text_field, flag=flag, window_bytes=window,
            encoding_errors=config.encoding_errors, backend=backend,
        )  # fmt: skip
    if file.format == "parquet":
        return records.iter_parquet(
            file.path, config.text_column, flag=flag, encoding_errors=config.encoding_errors,
            backend=backend,
        )  # fmt: skip
    return documents.iter_pieces(
        file.path, config.end_of_document, flag=flag, window_bytes=window,
        encoding_errors=config.encoding_errors, splittable=splittable,
        backend=backend, compression=file.compression,
    )  # fmt: skip


@dataclass
class _Tagged:
    """A piece batch with, per piece, its file's global index, its document's index in that file,
    and whether it ends at a forced (byte-bound) cut."""

    batch: documents.PieceBatch
    file_index: np.ndarray
    document: np.ndarray
    forced: np.ndarray


def _tagged(
    files: list[tuple[int, inputs.InputFile]], flag: str, config: PrepareConfig, splittable: bool
) -> Iterator[_Tagged]:
    """Every file's batches, consecutive small ones (many small files) joined up to a window, so the
    engine gets large calls whatever the file sizes. Joining is exact: no document spans files."""
    window = max(64, int(config.window_mb * (1 << 20)))
    pending: list[_Tagged] = []
    size = 0
    for index, file in files:
        doc_count = 0
        for batch in iter_input_pieces(file, flag, config, splittable):
            # the document of each piece; pieces before the first `first` flag continue the open one
            document = doc_count + np.cumsum(batch.first, dtype=np.int64) - 1
            doc_count += int(batch.first.sum())
            forced = np.zeros(len(batch.first), dtype=np.int64)
            forced[-1] = batch.forced_cuts
            pending.append(_Tagged(batch, np.full(len(batch.first), index, np.int64), document, forced))
            size += len(batch.flat)
            if size >= window:
                yield _join(pending)
                pending, size = [], 0
    if pending:
        yield _join(pending)


def _join(parts: list[_Tagged]) -> _Tagged:
    if len(parts) == 1:
        return parts[0]
    flats = [p.batch.flat for p in parts]
    starts = np.cumsum([0] + [len(f) for f in flats[:-1]])
    offsets = np.concatenate(
        [[0]] + [p.batch.offsets[1:] + start for p, start in zip(parts, starts, strict=True)]
    )
    forced = np.concatenate([p.forced for p in parts])
    batch = documents.PieceBatch(
        flat=np.concatenate(flats),
        offsets=offsets.astype(np.int64),
        first=np.concatenate([p.batch.first for p in parts]),
        last=np.concatenate([p.batch.last for p in parts]),
        forced_cuts=int(forced.sum()),
    )
    file_index = np.concatenate([p.file_index for p in parts])
    return _Tagged(batch, file_index, np.concatenate([p.document for p in parts]), forced)
