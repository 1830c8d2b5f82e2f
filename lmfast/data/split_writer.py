"""Token ids -> one split's `corpus.npy` and `sample_start_positions.npy`, written as they stream in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmfast.data import chunking, engines, inputs
from lmfast.data.boundaries import resolve_boundaries
from lmfast.data.config import PrepareConfig
from lmfast.data.errors import PrepareError
from lmfast.data.npy_writer import NpyAppender
from lmfast.data.pieces import _Tagged, _tagged
from lmfast.data.prefetch import _Prefetched
from lmfast.data.tokenizers import Tokenizer


@dataclass
class SplitStats:
    samples: int
    tokens: int
    documents: int
    forced_cuts: int = 0


class SplitWriter:
    """One split's `corpus.npy` and `sample_start_positions.npy`, appended batch by batch."""

    def __init__(self, out_dir: Path, tokenizer: Tokenizer, config: PrepareConfig, dtype: np.dtype) -> None:
        out_dir.mkdir()
        boundaries = resolve_boundaries(tokenizer, config.document_bos_token, config.document_eos_token)
        self._bos = -1 if boundaries.bos_token_id is None else boundaries.bos_token_id
        self._eos = -1 if boundaries.eos_token_id is None else boundaries.eos_token_id
        self._config, self._dtype = config, dtype
        self._carry = np.empty(0, dtype=dtype)  # the open sample of a document that continues
        self._in_doc = False
        self.documents = self.forced_cuts = 0
        self.corpus = NpyAppender(out_dir / "corpus.npy", dtype)
        self.starts = NpyAppender(out_dir / "sample_start_positions.npy", np.int64)

    def add(self, ids: np.ndarray, id_offsets: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:
        """Samples of consecutive pieces (their ids), cut and written; the open sample is carried."""
        max_len, min_len = self._config.max_sample_length, self._config.min_sample_length
        carry, n_pieces = self._carry, len(first)
        out = np.empty(len(carry) + len(ids) + 2 * n_pieces, dtype=self._dtype)
        out[: len(carry)] = carry
        starts_buffer = np.empty(len(out) // max_len + n_pieces + 2, dtype=np.int64)
        out_pos, cur_start, self._in_doc, n_starts = chunking.write_samples(
            ids, id_offsets, first, last, self._bos, self._eos, max_len, min_len,
            out, len(carry), 0, self._in_doc, starts_buffer, backend=self._config.kernel_backend,
        )  # fmt: skip
        # everything before the open sample is final; the open sample is carried over
        self.starts.append(starts_buffer[:n_starts] + self.corpus.length)
        self.corpus.append(out[:cur_start])
        self._carry = out[cur_start:out_pos].copy()
        self.documents += int(last.sum())

    def close(self) -> SplitStats:
        self.corpus.close()
        self.starts.close()
        if self._in_doc or len(self._carry):
            raise RuntimeError("input ended inside a document (internal error)")
        return SplitStats(self.starts.length, self.corpus.length, self.documents, self.forced_cuts)


def _select(ids: np.ndarray, id_offsets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids and offsets of the pieces where `mask` is True."""
    lengths = np.diff(id_offsets)
    offsets = np.zeros(int(mask.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[mask], out=offsets[1:])
    return ids[np.repeat(mask, lengths)], offsets


def write_documents(
    files: list[tuple[int, inputs.InputFile]],
    flag: str,
    outputs: dict[str, Path],
    engine: engines.Engine,
    tokenizer: Tokenizer,
    config: PrepareConfig,
    dtype: np.dtype,
    splittable: bool,
    batches: _Prefetched[_Tagged] | None = None,
) -> dict[str, SplitStats]:
    """Tokenize `files` (global index, file) in order into `outputs["train"]`, streaming; with a
    second output `outputs["valid"]`, the documents `inputs.valid_documents` picks go there.
    `batches`: the files' batches already being read (`_Prefetched(_tagged(files, ...))`); closed here.

    Raises:
        documents.DocumentsError: bad content (invalid UTF-8, no delimiter line, bad record, ...).
    """
    writers = {name: SplitWriter(directory, tokenizer, config, dtype) for name, directory in outputs.items()}
    split_valid = "valid" in writers and len(writers) == 2
    main_writer = writers["train"] if "train" in writers else next(iter(writers.values()))
    reader = batches if batches is not None else _Prefetched(_tagged(files, flag, config, splittable))
    try:
        for tagged in reader:
            batch = tagged.batch
            ids, id_offsets = engine.encode(batch.flat, batch.offsets)
            if not split_valid:
                main_writer.add(ids, id_offsets, batch.first, batch.last)
                main_writer.forced_cuts += batch.forced_cuts
                continue
            to_valid = inputs.valid_documents(tagged.file_index, tagged.document, config.valid_fraction)
            for name, mask in (("train", ~to_valid), ("valid", to_valid)):
                if mask.any():
                    writers[name].add(*_select(ids, id_offsets, mask), batch.first[mask], batch.last[mask])
                    writers[name].forced_cuts += int(tagged.forced[mask].sum())
    except BaseException:
        for writer in writers.values():  # the files go with the staging directory
            writer.corpus.close()
            writer.starts.close()
        raise
    finally:
        reader.close()
    return {name: writer.close() for name, writer in writers.items()}


def write_split(
    path: Path,
    flag: str,
    out_dir: Path,
    engine: engines.Engine,
    tokenizer: Tokenizer,
    config: PrepareConfig,
    dtype: np.dtype,
    splittable: bool,
) -> SplitStats:
    """Tokenize one documents file into `out_dir/{corpus,sample_start_positions}.npy`, streaming.

    Raises:
        PrepareError: the file gave no samples.
        documents.DocumentsError: bad content (invalid UTF-8, no delimiter line, ...).
    """
    fmt, compression = inputs.classify(path)
    file = inputs.InputFile(path, fmt, compression, path.stat().st_size)
    stats = write_documents(
        [(0, file)], flag, {"train": out_dir}, engine, tokenizer, config, dtype, splittable
    )
    _require_samples(stats["train"], flag, [file], config)
    return stats["train"]


def _require_samples(
    stats: SplitStats, flag: str, files: list[inputs.InputFile], config: PrepareConfig
) -> None:
    if stats.samples == 0:
        named = str(files[0].path) if len(files) == 1 else f"{len(files)} files"
        raise PrepareError(
            f"{flag}: {named} gave no samples ({stats.documents} documents, none reaching "
            f"--min_sample_length {config.min_sample_length} tokens)"
        )
