"""Documents stored as records: JSON lines (`--text_field`) and Parquet (`--text_column`).

One record is one document, its text taken verbatim (no delimiter, no line-ending change);
records whose text is only whitespace are skipped, as blank documents of delimited text are.
Both readers yield the `documents.PieceBatch`es that `prepare.write_split` consumes, about one
window of text at a time. Parquet is read with pyarrow in record batches of the text column
only, and a batch's strings go to the tokenizer as Arrow laid them out (no Python string per
row); memory is bounded by a row group. Errors name the file and the line or row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmfast.data import chunking, inputs
from lmfast.data.chunking import Backend
from lmfast.data.documents import DocumentsError, PieceBatch

PARQUET_BATCH_ROWS = 8192


def _batch(flat: np.ndarray, offsets: np.ndarray, backend: Backend) -> PieceBatch | None:
    """Whole documents (every piece first and last), blank ones dropped; None when none is left."""
    keep = ~chunking.blank_documents(flat, offsets, backend=backend)
    if not keep.all():
        if not keep.any():
            return None
        flat, offsets = chunking.gather_documents(
            flat, offsets[:-1][keep], offsets[1:][keep], np.zeros(int(keep.sum()), np.uint8), False,
            backend=backend,
        )  # fmt: skip
    ones = np.ones(len(offsets) - 1, dtype=np.uint8)
    return PieceBatch(flat=flat, offsets=offsets, first=ones, last=ones.copy())


def _pack(texts: list[bytes], backend: Backend) -> PieceBatch | None:
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in texts])
    return _batch(np.frombuffer(b"".join(texts), dtype=np.uint8).copy(), offsets, backend)


def iter_jsonl(
    path: Path,
    compression: str,
    text_field: str,
    *,
    flag: str,
    window_bytes: int,
    encoding_errors: str = "strict",
    backend: Backend = "auto",
) -> Iterator[PieceBatch]:
    """The `text_field` string of every JSON object line (blank lines skipped).

    Raises:
        DocumentsError: "<flag>: <path> line N: ..." for invalid UTF-8 (strict), invalid JSON, a
            line that is not an object, or a missing or non-string field; a corrupt stream.
    """
    texts: list[bytes] = []
    size, number = 0, 0
    try:
        with inputs.open_binary(path, compression) as stream:
            for number, raw in enumerate(stream, start=1):  # noqa: B007 (read after the loop)
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8", errors=encoding_errors)
                except UnicodeDecodeError as error:
                    raise DocumentsError(
                        f"{flag}: {path} line {number}: invalid UTF-8 at byte {error.start} of the line; "
                        "fix the file or pass --encoding_errors replace"
                    ) from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DocumentsError(
                        f"{flag}: {path} line {number}: invalid JSON ({error.msg})"
                    ) from None
                if not isinstance(record, dict):
                    raise DocumentsError(
                        f"{flag}: {path} line {number}: expected a JSON object, got {type(record).__name__}"
                    )
                text = record.get(text_field)
                if not isinstance(text, str):
                    problem = (
                        "no" if text_field not in record else f"a {type(text).__name__}, not a string, in"
                    )
                    raise DocumentsError(
                        f"{flag}: {path} line {number}: {problem} field {text_field!r} (--text_field)"
                    )
                try:
                    data = text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
                    if encoding_errors == "strict":
                        raise DocumentsError(
                            f"{flag}: {path} line {number}: field {text_field!r} holds a lone surrogate; "
                            "fix the file or pass --encoding_errors replace"
                        ) from None
                    data = text.encode("utf-8", errors=encoding_errors)
                texts.append(data)
                size += len(data)
                if size >= window_bytes:
                    if (batch := _pack(texts, backend)) is not None:
                        yield batch
                    texts, size = [], 0
    except inputs.decompression_errors() as error:
        raise DocumentsError(f"{flag}: {path}: not a valid {compression} stream ({error})") from None
    if texts and (batch := _pack(texts, backend)) is not None:
        yield batch


def check_parquet(path: Path, text_column: str, flag: str, schema: Any = None) -> None:
    """The file is Parquet and has a string column `text_column` (`schema`: its Arrow schema, if read).

    Raises:
        DocumentsError: naming the file and what is wrong.
    """
    pa = inputs.require("pyarrow", path)
    pq = inputs.require("pyarrow.parquet", path)
    try:
        schema = pq.read_schema(path) if schema is None else schema
    except (pa.ArrowInvalid, OSError) as error:
        raise DocumentsError(f"{flag}: {path}: not a Parquet file ({error})") from None
    if text_column not in schema.names:
        raise DocumentsError(
            f"{flag}: {path}: no column {text_column!r} (--text_column); columns: {', '.join(schema.names)}"
        )
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DocumentsError(f"{flag}: {path}: column {text_column!r} is {kind}, not a string column")


def iter_parquet(
    path: Path,
    text_column: str,
    *,
    flag: str,
    encoding_errors: str = "strict",
    backend: Backend = "auto",
    batch_rows: int = PARQUET_BATCH_ROWS,
) -> Iterator[PieceBatch]:
    """The `text_column` string of every row, one record batch at a time.

    Raises:
        DocumentsError: "<flag>: <path> row N: ..." for a null or invalid UTF-8 (strict) value.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        check_parquet(path, text_column, flag, parquet.schema_arrow)
        for record_batch in parquet.iter_batches(batch_size=batch_rows, columns=[text_column]):
            column = record_batch.column(0)
            if column.null_count:
                first_null = int(np.flatnonzero(np.asarray(column.is_null()))[0])
                raise DocumentsError(f"{flag}: {path} row {row + first_null}: {text_column!r} is null")
            wide = pa.types.is_large_string(column.type)
            buffers = column.buffers()
            offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)
            offsets = offsets[column.offset : column.offset + len(column) + 1].astype(np.int64)
            data = (
                np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
            )
            flat = data[offsets[0] : offsets[-1]].copy()
            offsets -= offsets[0]
            bad = chunking.utf8_error_offset(flat, backend=backend)
            if bad >= 0:
                at = row + int(np.searchsorted(offsets, bad, side="right")) - 1
                if encoding_errors == "strict":
                    raise DocumentsError(
                        f"{flag}: {path} row {at}: invalid UTF-8 in {text_column!r}; "
                        "fix the file or pass --encoding_errors replace"
                    )
                from lmfast.data.documents import _fix_encoding

                flat, offsets = _fix_encoding(flat, offsets, encoding_errors, backend)
            row += len(column)
            if (batch := _batch(flat, offsets, backend)) is not None:
                yield batch
    except (pa.ArrowInvalid, OSError) as error:
        raise DocumentsError(f"{flag}: {path} near row {row}: cannot read Parquet ({error})") from None
