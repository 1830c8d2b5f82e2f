"""`prepare(config) -> Path`: raw documents files -> a tokenized, memory-mapped dataset (docs/architecture.md §1).

Pipeline per split: memory-mapped windows of the file -> documents cut into pieces (native
kernels) -> the fastest tokenizer engine proven identical to the reference -> samples written
straight into a preallocated uint16/int32 buffer -> appended to `corpus.npy`. Everything goes
to a temporary directory beside the final one and is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from lmfast.data import chat_exports, chunking, dialogs, documents, engines, inputs, records, staging
from lmfast.data.boundaries import DocumentBoundaries, resolve_boundaries
from lmfast.data.errors import PrepareError
from lmfast.data.npy_writer import NpyAppender
from lmfast.data.tokenizers import Tokenizer, UnknownTokenizerError, load_tokenizer
from lmfast.latest import point_latest
from lmfast.models.dataset import DatasetDescription

logger = logging.getLogger(__name__)

UINT16_VOCAB_LIMIT = 65536
T = TypeVar("T")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PrepareConfig:
    """Flags of `lmfast prepare` (flag name = field name = description.json key)."""

    documents_train_file: list[Path] = field(
        metadata=_help(
            "Train documents: files, globs and directories (sorted); delimited text, .jsonl, .parquet, "
            "text and .jsonl also .gz/.zst."
        )
    )
    documents_valid_file: list[Path] = field(
        default_factory=list,
        kw_only=True,
        metadata=_help("Validation documents, same forms; or none with --valid_fraction."),
    )
    valid_fraction: float = field(
        default=0.0,
        kw_only=True,
        metadata=_help("Without a valid file: hold out this fraction of the train documents (deterministic)."),
    )
    text_field: str = field(default="text", kw_only=True, metadata=_help("JSONL inputs: the field holding the text."))
    text_column: str = field(
        default="text", kw_only=True, metadata=_help("Parquet inputs: the string column holding the text.")
    )
    num_shards: int = field(
        default=1, kw_only=True, metadata=_help("Split the inputs into this many shards (one job each).")
    )
    shard_index: int = field(
        default=0,
        kw_only=True,
        metadata=_help("The shard this run prepares, 0..num_shards-1; `lmfast prepare merge` joins them."),
    )
    end_of_document: str = field(
        default="",
        kw_only=True,
        metadata=_help("Delimiter line between documents, e.g. [END_OF_DOCUMENT] (required for text)."),
    )
    tokenizer_cls_name: str = field(
        metadata=_help(
            "Registered tokenizer (GPT2Tokenizer), a local HF tokenizer dir or tokenizer.json, or module:factory."
        )
    )
    max_sample_length: int = field(metadata=_help("Maximum tokens per sample; longer documents are cut."))
    min_sample_length: int = field(default=10, metadata=_help("Samples shorter than this are dropped."))
    datasets_root: Path = field(default=Path("data/datasets"), metadata=_help("Root directory of datasets."))
    dataset_name: str = field(
        default="default", metadata=_help("Dataset name; each run writes <root>/<name>/<N>/.")
    )
    tokenizer_engine: str = field(
        default="auto", metadata=_help("auto (fastest proven identical), gigatoken, tiktoken or tokenizers.")
    )
    encoding_errors: Literal["strict", "replace", "ignore"] = field(
        default="strict",
        metadata=_help("Invalid UTF-8: strict (error saying where), replace (U+FFFD) or ignore."),
    )
    num_threads: int = field(default=0, metadata=_help("Tokenizer threads; 0 = all cores."))
    window_mb: float = field(
        default=16, metadata=_help("MiB of input mapped at a time (bounds peak memory).")
    )
    kernel_backend: chunking.Backend = field(
        default="auto", metadata=_help("Native kernels: auto, cython or python.")
    )
    document_bos_token: str = field(
        default="auto",
        metadata=_help("Token before each document: auto (the tokenizer's convention), none, or a token."),
    )
    document_eos_token: str = field(
        default="auto",
        metadata=_help(
            "Token after each document: auto (the pretraining separator, e.g. <|endoftext|>), none, or a token."
        ),
    )
    documents_format: str = field(
        default="text",
        metadata=_help(
            'text (delimiter-separated documents), dialogs (JSONL, one {"messages": [...]} a line), '
            "telegram (Telegram Desktop's JSON export) or whatsapp (an exported WhatsApp chat)."
        ),
    )
    chat_template: str = field(
        default="", metadata=_help("dialogs: a jinja chat template file; default: the tokenizer's own.")
    )
    train_on: str = field(
        default="assistant", metadata=_help("dialogs: tokens trained on, assistant (turns) or all.")
    )
    bad_lines: str = field(
        default="error",
        metadata=_help("dialogs: a bad JSONL line is an error, or skip (skipped and counted)."),
    )
    persona: str = field(
        default="",
        metadata=_help(
            "telegram/whatsapp: whose messages are the assistant turns, a name or a Telegram id "
            "(default for a full Telegram export: its owner)."
        ),
    )
    chat_gap_minutes: float = field(
        default=360.0,
        metadata=_help("telegram/whatsapp: a silence this long starts a new conversation; 0 = never."),
    )
    chat_media: str = field(
        default="drop",
        metadata=_help("telegram/whatsapp: stickers and media without text are dropped, or mark ([photo], ...)."),
    )
    whatsapp_date_order: str = field(
        default="auto", metadata=_help("whatsapp: date order, auto (detected), DMY, MDY or YMD.")
    )
    redact: bool = field(
        default=False,
        metadata=_help("telegram/whatsapp: replace e-mail addresses, links and phone numbers with placeholders."),
    )

    def __post_init__(self) -> None:
        """Every option is checked here, once; the kernels and engines assume checked options.

        Raises:
            PrepareError: with `.field` (the flag) and `.rule` (what it must satisfy).
        """
        self.documents_train_file = _paths(self.documents_train_file)
        self.documents_valid_file = _paths(self.documents_valid_file)
        self.datasets_root = Path(self.datasets_root)
        if not self.documents_train_file:
            raise PrepareError("documents_train_file", "is required (files, globs or directories)")
        if not 0 <= self.valid_fraction < 1:
            raise PrepareError("valid_fraction", f"must be in [0, 1), got {self.valid_fraction}")
        if self.valid_fraction and self.documents_valid_file:
            raise PrepareError("valid_fraction", "give --documents_valid_file or --valid_fraction, not both")
        if not self.valid_fraction and not self.documents_valid_file:
            try:  # in command-line order: a train file that is not there is the first thing wrong
                inputs.expand(self.documents_train_file, "--documents_train_file")
            except inputs.InputError as error:
                raise PrepareError(str(error)) from None
            raise PrepareError("documents_valid_file", "is required unless --valid_fraction holds out documents")
        if self.num_shards < 1:
            raise PrepareError("num_shards", f"must be >= 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise PrepareError("shard_index", f"must be in [0, {self.num_shards - 1}], got {self.shard_index}")
        for name in ("text_field", "text_column"):
            if not getattr(self, name):
                raise PrepareError(name, "must not be empty")
        formats = (*dialogs.FORMATS, *chat_exports.FORMATS)
        if self.documents_format not in formats:
            raise PrepareError("documents_format", f"expected one of {formats}, got {self.documents_format!r}")
        if self.train_on not in dialogs.TRAIN_ON:
            raise PrepareError("train_on", f"expected one of {dialogs.TRAIN_ON}, got {self.train_on!r}")
        if self.bad_lines not in dialogs.BAD_LINES:
            raise PrepareError("bad_lines", f"expected one of {dialogs.BAD_LINES}, got {self.bad_lines!r}")
        if self.bad_lines != "error" and self.documents_format != "dialogs":
            raise PrepareError(
                "bad_lines",
                "applies to --documents_format dialogs only (a bad line of a document file is always an error)",
            )
        delimiter = self.end_of_document.strip()
        if self.documents_format == "text" and not delimiter and self._may_be_text():
            raise PrepareError("end_of_document", "must not be empty or whitespace (required with --documents_format text)")
        if any(c.isspace() for c in delimiter):
            raise PrepareError("end_of_document", f"{delimiter!r} must not contain whitespace")
        for name in ("max_sample_length", "min_sample_length"):
            if getattr(self, name) < 1:
                raise PrepareError(name, f"must be positive, got {getattr(self, name)}")
        if self.is_dialog and self.tokenizer_engine not in ("auto", "tokenizers"):
            raise PrepareError(
                "tokenizer_engine",
                "dialogs are encoded by tokenizers (the chat template's special tokens must be recognised), "
                f"got {self.tokenizer_engine!r}",
            )
        if self.min_sample_length > self.max_sample_length:
            raise PrepareError(
                "min_sample_length",
                f"--min_sample_length ({self.min_sample_length}) must not exceed "
                f"--max_sample_length ({self.max_sample_length})",
            )
        choices = {
            "tokenizer_engine": ("auto", *engines.ENGINES),
            "encoding_errors": documents.ENCODING_ERRORS,
            "kernel_backend": ("auto", "cython", "python"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise PrepareError(name, f"expected one of {allowed}, got {getattr(self, name)!r}")
        if self.num_threads < 0:
            raise PrepareError("num_threads", f"must be >= 0, got {self.num_threads}")
        if not self.window_mb > 0 or self.window_mb == float("inf"):
            raise PrepareError("window_mb", f"must be a positive number, got {self.window_mb}")
        for name in ("document_bos_token", "document_eos_token"):
            if not getattr(self, name):
                raise PrepareError(name, "must be auto, none or a token, got an empty string")
        if not self.dataset_name or "/" in self.dataset_name or self.dataset_name in (".", ".."):
            raise PrepareError("dataset_name", f"{self.dataset_name!r} is not a valid directory name")

        if self.is_dialog:
            for name in ("documents_train_file", "documents_valid_file"):
                if len(getattr(self, name)) > 1:
                    raise PrepareError(name, f"--documents_format {self.documents_format} takes one file per split")
            chat = self.documents_format in chat_exports.FORMATS
            if (self.valid_fraction and not chat) or self.num_shards > 1:
                flag = "num_shards" if self.num_shards > 1 else "valid_fraction"
                raise PrepareError(flag, f"does not work with --documents_format {self.documents_format}")
        if self.chat_media not in chat_exports.MEDIA:
            raise PrepareError("chat_media", f"expected one of {chat_exports.MEDIA}, got {self.chat_media!r}")
        if self.whatsapp_date_order not in chat_exports.DATE_ORDERS:
            raise PrepareError(
                "whatsapp_date_order", f"expected one of {chat_exports.DATE_ORDERS}, got {self.whatsapp_date_order!r}"
            )
        if not 0 <= self.chat_gap_minutes < float("inf"):
            raise PrepareError("chat_gap_minutes", f"must be >= 0 (0 = never split), got {self.chat_gap_minutes}")
        if len(self.persona) > 256:
            raise PrepareError("persona", "must be at most 256 characters")

    @property
    def is_dialog(self) -> bool:
        """Conversations with a loss mask: dialogs JSONL or a chat export."""
        return self.documents_format == "dialogs" or self.documents_format in chat_exports.FORMATS

    def chat_options(self) -> chat_exports.ChatOptions:
        return chat_exports.ChatOptions(
            self.persona, self.chat_gap_minutes, self.chat_media, self.whatsapp_date_order, self.redact
        )

    def _may_be_text(self) -> bool:
        """Whether an input named so far may be delimited text (record files need no delimiter)."""
        for path in (*self.documents_train_file, *self.documents_valid_file):
            if not path.is_dir() and inputs.classify(path)[0] == "text":
                return True
        return False

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, list):
                return [plain(v) for v in value]
            return str(value) if isinstance(value, Path) else value

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


def _paths(value: Any) -> list[Path]:
    """One path or several (the Python API takes either; the CLI always gives a list)."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


@dataclass
class SplitStats:
    samples: int
    tokens: int
    documents: int
    forced_cuts: int = 0


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


class _Prefetched(Iterator[T]):
    """Run `iterator` in a thread, `depth` items ahead, from construction on: reading the next
    window (native kernels, GIL released) overlaps tokenizing and writing the current one, and the
    first window is read while the engine is chosen. Errors re-raise in `__next__`; `close` (also
    at the end) stops the thread."""

    def __init__(self, iterator: Iterator[T], depth: int = 1) -> None:
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = object()
        self._iterator = iterator
        self._thread = threading.Thread(target=self._produce, name="lmfast-prepare-reader", daemon=True)
        self._thread.start()

    def _offer(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._iterator:
                if not self._offer(item):
                    return
            self._offer(self._done)
        except BaseException as error:  # handed to the consumer, raised there
            self._offer(_Failure(error))

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._items.get()
        if item is self._done:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Failure:
    error: BaseException


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
    offsets = np.concatenate([[0]] + [p.batch.offsets[1:] + start for p, start in zip(parts, starts, strict=True)])
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
    stats = write_documents([(0, file)], flag, {"train": out_dir}, engine, tokenizer, config, dtype, splittable)
    _require_samples(stats["train"], flag, [file], config)
    return stats["train"]


def _require_samples(stats: SplitStats, flag: str, files: list[inputs.InputFile], config: PrepareConfig) -> None:
    if stats.samples == 0:
        named = str(files[0].path) if len(files) == 1 else f"{len(files)} files"
        raise PrepareError(
            f"{flag}: {named} gave no samples ({stats.documents} documents, none reaching "
            f"--min_sample_length {config.min_sample_length} tokens)"
        )


def prepare(config: PrepareConfig | None = None, /, **flags: Any) -> Path:
    """Tokenize both splits into `<datasets_root>/<dataset_name>/<N>/` and return that directory.

    Takes either a `PrepareConfig` or its fields as keyword arguments (the CLI's flag names), so
    `prepare(documents_train_file=..., ..., tokenizer_cls_name="MyTokenizer")` works as written.

    Raises:
        PrepareError: bad input (one line naming the flag or file); nothing is left on disk.
        TypeError: both a config and keyword arguments, neither, or an unknown keyword.
    """
    if config is None:
        config = PrepareConfig(**flags)
    elif flags:
        raise TypeError(
            f"prepare() takes a PrepareConfig or keyword arguments, not both (got {sorted(flags)})"
        )
    elif not isinstance(config, PrepareConfig):
        raise TypeError(f"prepare() expects a PrepareConfig, got {type(config).__name__}")
    started = time.perf_counter()
    try:
        tokenizer = load_tokenizer(config.tokenizer_cls_name)
    except UnknownTokenizerError as error:
        raise PrepareError(f"--tokenizer_cls_name: {error}") from None
    dialog = config.is_dialog
    try:
        splits = _resolve_inputs(config)
    except (inputs.InputError, documents.DocumentsError, dialogs.DialogsError) as error:
        raise PrepareError(str(error)) from None
    _check_writable_root(config.datasets_root)
    boundaries = resolve_boundaries(tokenizer, config.document_bos_token, config.document_eos_token)
    try:
        kernel_backend = chunking.resolve_backend(config.kernel_backend)
    except ImportError as error:
        raise PrepareError(f"--kernel_backend: {error}") from None
    splittable = engines.is_byte_level_bpe(tokenizer)
    train_mine = _shard(splits["train"], config)
    # the first train window is read (GIL released) while the engine is chosen
    reader = None
    if not dialog:
        reader = _Prefetched(_tagged(train_mine, "--documents_train_file", config, splittable))
    try:
        return _prepare_with(
            config, tokenizer, splits, boundaries, kernel_backend, train_mine, reader, started
        )
    finally:
        if reader is not None:
            reader.close()


def _prepare_with(
    config: PrepareConfig,
    tokenizer: Tokenizer,
    splits: dict[str, list[inputs.InputFile]],
    boundaries: DocumentBoundaries,
    kernel_backend: str,
    train_mine: list[tuple[int, inputs.InputFile]],
    train_batches: _Prefetched[_Tagged] | None,
    started: float,
) -> Path:
    """`prepare` once its inputs are checked: choose the engine, write both splits, commit."""
    dialog = config.is_dialog
    renderer = None
    try:
        if dialog:  # special tokens in a rendered chat are tokens: only the reference engine encodes them so
            template = dialogs.load_chat_template(config.chat_template, config.tokenizer_cls_name)
            renderer = dialogs.DialogRenderer(template, tokenizer, config.train_on)
            engine = None
        else:
            engine = engines.select_engine(
                tokenizer,
                config.tokenizer_engine,
                samples=[_sample_text(splits["train"][0], config)],
                num_threads=config.num_threads or None,
            )
    except dialogs.DialogsError as error:
        raise PrepareError(str(error)) from None
    except ValueError as error:
        raise PrepareError(f"--tokenizer_engine: {error}") from None
    chats = _read_chats(config, splits) if config.documents_format in chat_exports.FORMATS else None
    engine_name = engine.name if engine is not None else "tokenizers"
    vocab_size = tokenizer.vocab_size
    dtype = np.dtype(np.uint16 if vocab_size <= UINT16_VOCAB_LIMIT else np.int32)
    splittable = engines.is_byte_level_bpe(tokenizer)
    logger.info(
        "tokenizer %s (%d ids, %s), engine %s, kernels %s",
        tokenizer.name,
        vocab_size,
        dtype,
        engine_name,
        kernel_backend,
    )
    logger.info("document boundaries: %s", boundaries.source)

    dataset_dir = config.datasets_root / config.dataset_name
    created = [p for p in (config.datasets_root, dataset_dir) if not p.exists()]
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrepareError(
            f"--datasets_root: cannot create {dataset_dir}: {error.strerror or error}"
        ) from None
    staging.remove_stale(dataset_dir)
    stage: staging.Staging | None = None
    try:
        stage = staging.Staging(dataset_dir)
        temporary = stage.directory
        stats, dialog_stats = {}, {}
        sharded = config.num_shards > 1
        try:
            if renderer is not None:
                for name in ("train", "valid"):
                    path = splits.get(name, splits["train"])[0].path
                    flag = f"--documents_{name}_file" if name in splits else "--valid_fraction"
                    dialog_stats[name] = dialogs.write_dialog_split(
                        path, flag, temporary / name, tokenizer, renderer,
                        dtype=dtype, max_len=config.max_sample_length, min_len=config.min_sample_length,
                        bad_lines=config.bad_lines, encoding_errors=config.encoding_errors,
                        conversations=chats.conversations[name] if chats is not None else None,
                    )  # fmt: skip
                    split = dialog_stats[name]
                    stats[name] = SplitStats(split.samples, split.tokens, split.conversations)
            else:
                assert engine is not None
                write = partial(write_documents, engine=engine, tokenizer=tokenizer, config=config,
                                dtype=dtype, splittable=splittable)  # fmt: skip
                if config.valid_fraction:
                    outputs = {"train": temporary / "train", "valid": temporary / "valid"}
                    stats = write(train_mine, "--documents_train_file", outputs, batches=train_batches)
                else:
                    train_output = {"train": temporary / "train"}
                    stats = write(train_mine, "--documents_train_file", train_output, batches=train_batches)
                    valid_mine = _shard(splits["valid"], config)
                    stats |= write(valid_mine, "--documents_valid_file", {"valid": temporary / "valid"})
                if not sharded:
                    for name in ("train", "valid"):
                        held_out = name == "valid" and config.valid_fraction
                        flag = "--valid_fraction" if held_out else f"--documents_{name}_file"
                        _require_samples(stats[name], flag, splits["train" if held_out else name], config)
        except (documents.DocumentsError, dialogs.DialogsError) as error:
            raise PrepareError(str(error)) from None
        tokenizer.save(temporary / "tokenizer")
        description = _description(
            config, tokenizer, boundaries, stats, dtype, engine_name, kernel_backend, started
        )
        description["input_files"] = [
            files[k].record(name)
            for name, files in splits.items()
            for k in (range(len(files)) if dialog else [k for k, _ in _shard(files, config)])
        ]
        if sharded:
            description["shard_inputs_sha256"] = inputs_digest(splits)
        if renderer is not None:
            dialogs.save_chat_template(temporary / "tokenizer", renderer.template)
            description.update(dialogs.description_keys(renderer.template, dialog_stats))
        if chats is not None:
            description.update(chats.description())
            for record in description["input_files"]:
                record["format"] = config.documents_format
        description.write(temporary)
        if sharded:
            final = dataset_dir / shard_name(config.shard_index, config.num_shards)
            try:
                stage.commit(final)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise PrepareError(
                        f"--shard_index: {final} exists already (remove it to prepare this shard again)"
                    ) from None
                raise
        else:
            final = _commit(stage, dataset_dir)
    except BaseException as error:
        if stage is not None:
            stage.discard()
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                pass
        if isinstance(error, OSError):  # full disk, read-only or vanished output directory
            raise PrepareError(
                f"--datasets_root: cannot write the dataset in {dataset_dir}: {error.strerror or error}"
            ) from None
        raise
    logger.info("wrote %s in %.2f s", final, time.perf_counter() - started)
    return final


def _read_chats(config: PrepareConfig, splits: dict[str, list[inputs.InputFile]]) -> chat_exports.ChatSplits:
    """A chat-export run's conversations, read before anything is written (errors leave nothing)."""
    valid = splits["valid"][0].path if "valid" in splits else None
    try:
        chats = chat_exports.read_splits(
            config.documents_format, splits["train"][0].path, valid, config.valid_fraction,
            config.chat_options(), config.encoding_errors,
        )  # fmt: skip
    except dialogs.DialogsError as error:
        raise PrepareError(str(error)) from None
    logger.info(
        "persona %s (%s): %d conversations from %d messages", chats.persona[1], chats.persona[0],
        sum(map(len, chats.conversations.values())),
        sum(e.stats.messages_kept for e in chats.exports.values()),
    )  # fmt: skip
    for export in chats.exports.values():
        if export.date_order is not None:
            logger.info("%s: dates read as %s", export.path, export.date_order)
    return chats


def shard_name(index: int, count: int) -> str:
    """The directory a shard is written to, beside the dataset's versions."""
    return f"shard-{index:05d}-of-{count:05d}"


def inputs_digest(splits: dict[str, list[inputs.InputFile]]) -> str:
    """SHA-256 of every (split, path, size): shards of one run share it (`lmfast prepare merge` checks)."""
    listing = [(name, str(f.path), f.size) for name, files in splits.items() for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _shard(files: list[inputs.InputFile], config: PrepareConfig) -> list[tuple[int, inputs.InputFile]]:
    """(global index, file) of this run's files: all, or the slice of `--shard_index`."""
    if config.num_shards == 1:
        return list(enumerate(files))
    return [(k, files[k]) for k in inputs.shard_slice(files, config.num_shards, config.shard_index)]


def _resolve_inputs(config: PrepareConfig) -> dict[str, list[inputs.InputFile]]:
    """Both splits' input files, checked cheaply before any work (`--valid_fraction`: train only).

    Raises:
        inputs.InputError, documents.DocumentsError, dialogs.DialogsError: naming the flag and file.
    """
    chat = config.documents_format in chat_exports.FORMATS
    arguments = {"train": config.documents_train_file, "valid": config.documents_valid_file}
    if chat:  # a Telegram export's folder stands for its result.json
        arguments = {name: [chat_exports.export_file(p) for p in paths] for name, paths in arguments.items()}
    splits = {"train": inputs.expand(arguments["train"], "--documents_train_file")}
    if not config.valid_fraction:
        splits["valid"] = inputs.expand(arguments["valid"], "--documents_valid_file")
        train = {os.path.realpath(f.path) for f in splits["train"]}
        both = [str(f.path) for f in splits["valid"] if os.path.realpath(f.path) in train]
        if both:
            logger.warning(
                "--documents_valid_file: %s is also a --documents_train_file: the validation loss "
                "will measure documents the model was trained on",
                ", ".join(both[:3]) + (", ..." if len(both) > 3 else ""),
            )
    delimiter = config.end_of_document.strip()
    for name, files in splits.items():
        flag = f"--documents_{name}_file"
        for file in files:
            if config.is_dialog:
                if file.compression != "none":
                    raise inputs.InputError(
                        f"{flag}: {file.path}: {config.documents_format} are read from a plain, uncompressed file"
                    )
                dialogs.check_dialogs_file(file.path, flag)
                continue
            if file.compression == "zstd":
                inputs.require("zstandard", file.path)
            if file.format == "text" and not delimiter:
                raise PrepareError(
                    "end_of_document", f"must not be empty or whitespace ({file.path} is delimited text)"
                )
            if file.format == "text" and file.compression == "none":
                documents.check_documents_file(file.path, delimiter, flag)
            elif file.format == "parquet":
                records.check_parquet(file.path, config.text_column, flag)
    return splits


def _sample_text(file: inputs.InputFile, config: PrepareConfig) -> str:
    """The start of the first train file, as text, for the engine identity check."""
    if file.format == "text":
        try:
            return documents.read_sample_text(file.path, compression=file.compression)
        except inputs.decompression_errors():  # reported with its flag when the file is read for real
            return ""
    pieces = (
        records.iter_jsonl(file.path, file.compression, config.text_field, flag="", window_bytes=1 << 16)
        if file.format == "jsonl"
        else records.iter_parquet(file.path, config.text_column, flag="", batch_rows=64)
    )
    try:
        batch = next(iter(pieces), None)
    except documents.DocumentsError:  # reported with its flag when the file is read for real
        return ""
    return "\n".join(batch.texts())[: 1 << 16] if batch is not None else ""


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
