"""`prepare(config) -> Path`: raw documents files -> a tokenized, memory-mapped dataset (docs/architecture.md §1).

Pipeline per split: memory-mapped windows of the file -> documents cut into pieces (native
kernels) -> the fastest tokenizer engine proven identical to the reference -> samples written
straight into a preallocated uint16/int32 buffer -> appended to `corpus.npy`. Everything goes
to a temporary directory beside the final one and is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lmfast.data import chunking, dialogs, documents, engines, staging
from lmfast.data.boundaries import DocumentBoundaries, resolve_boundaries
from lmfast.data.errors import PrepareError
from lmfast.data.npy_writer import NpyAppender
from lmfast.data.tokenizers import Tokenizer, UnknownTokenizerError, load_tokenizer

logger = logging.getLogger(__name__)

UINT16_VOCAB_LIMIT = 65536
T = TypeVar("T")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PrepareConfig:
    """Flags of `lmfast prepare` (flag name = field name = description.json key)."""

    documents_train_file: Path = field(metadata=_help("Raw train documents, separated by delimiter lines."))
    documents_valid_file: Path = field(metadata=_help("Raw validation documents, same format."))
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
    encoding_errors: str = field(
        default="strict",
        metadata=_help("Invalid UTF-8: strict (error saying where), replace (U+FFFD) or ignore."),
    )
    num_threads: int = field(default=0, metadata=_help("Tokenizer threads; 0 = all cores."))
    window_mb: float = field(
        default=16, metadata=_help("MiB of input mapped at a time (bounds peak memory).")
    )
    kernel_backend: str = field(default="auto", metadata=_help("Native kernels: auto, cython or python."))
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
            'text (delimiter-separated documents) or dialogs (JSONL, one {"messages": [...]} a line).'
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

    def __post_init__(self) -> None:
        """Every option is checked here, once; the kernels and engines assume checked options.

        Raises:
            PrepareError: with `.field` (the flag) and `.rule` (what it must satisfy).
        """
        self.documents_train_file = Path(self.documents_train_file)
        self.documents_valid_file = Path(self.documents_valid_file)
        self.datasets_root = Path(self.datasets_root)
        if self.documents_format not in dialogs.FORMATS:
            raise PrepareError("documents_format", f"expected one of {dialogs.FORMATS}, got {self.documents_format!r}")
        if self.train_on not in dialogs.TRAIN_ON:
            raise PrepareError("train_on", f"expected one of {dialogs.TRAIN_ON}, got {self.train_on!r}")
        if self.bad_lines not in dialogs.BAD_LINES:
            raise PrepareError("bad_lines", f"expected one of {dialogs.BAD_LINES}, got {self.bad_lines!r}")
        delimiter = self.end_of_document.strip()
        if self.documents_format == "text" and not delimiter:
            raise PrepareError("end_of_document", "must not be empty or whitespace (required with --documents_format text)")
        if any(c.isspace() for c in delimiter):
            raise PrepareError("end_of_document", f"{delimiter!r} must not contain whitespace")
        for name in ("max_sample_length", "min_sample_length"):
            if getattr(self, name) < 1:
                raise PrepareError(name, f"must be positive, got {getattr(self, name)}")
        if self.documents_format == "dialogs" and self.tokenizer_engine not in ("auto", "tokenizers"):
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

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


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
        return final


def _prefetched(iterator: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Run `iterator` in a thread, `depth` items ahead: reading the next window (native kernels,
    GIL released) overlaps tokenizing and writing the current one. Errors re-raise here."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not offer(item):
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer, raised there
            offer(_Failure(error))

    thread = threading.Thread(target=produce, name="lmfast-prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Failure:
    error: BaseException


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
    out_dir.mkdir()
    boundaries = resolve_boundaries(tokenizer, config.document_bos_token, config.document_eos_token)
    bos = -1 if boundaries.bos_token_id is None else boundaries.bos_token_id
    eos = -1 if boundaries.eos_token_id is None else boundaries.eos_token_id
    max_len, min_len = config.max_sample_length, config.min_sample_length
    carry = np.empty(0, dtype=dtype)  # the open sample of a document that continues
    in_doc, n_documents, forced_cuts = False, 0, 0
    with (
        NpyAppender(out_dir / "corpus.npy", dtype) as corpus,
        NpyAppender(out_dir / "sample_start_positions.npy", np.int64) as starts,
    ):
        batches = documents.iter_pieces(
            path,
            config.end_of_document,
            flag=flag,
            window_bytes=max(64, int(config.window_mb * (1 << 20))),
            encoding_errors=config.encoding_errors,
            splittable=splittable,
            backend=config.kernel_backend,  # type: ignore[arg-type]
        )
        for batch in _prefetched(batches):
            ids, id_offsets = engine.encode(batch.flat, batch.offsets)
            n_pieces = len(batch.first)
            out = np.empty(len(carry) + len(ids) + 2 * n_pieces, dtype=dtype)
            out[: len(carry)] = carry
            starts_buffer = np.empty(len(out) // max_len + n_pieces + 2, dtype=np.int64)
            out_pos, cur_start, in_doc, n_starts = chunking.write_samples(
                ids, id_offsets, batch.first, batch.last, bos, eos, max_len, min_len,
                out, len(carry), 0, in_doc, starts_buffer, backend=config.kernel_backend,  # type: ignore[arg-type]
            )  # fmt: skip
            # everything before the open sample is final; the open sample is carried over
            starts.append(starts_buffer[:n_starts] + corpus.length)
            corpus.append(out[:cur_start])
            carry = out[cur_start:out_pos].copy()
            n_documents += batch.n_documents
            forced_cuts += batch.forced_cuts
        if in_doc or len(carry):
            raise RuntimeError(f"{path}: input ended inside a document (internal error)")
        stats = SplitStats(starts.length, corpus.length, n_documents, forced_cuts)
    if stats.samples == 0:
        raise PrepareError(
            f"{flag}: {path} gave no samples ({n_documents} documents, none reaching "
            f"--min_sample_length {min_len} tokens)"
        )
    return stats


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
    splits = {"train": config.documents_train_file, "valid": config.documents_valid_file}
    dialog = config.documents_format == "dialogs"
    try:
        for name, path in splits.items():
            if dialog:
                dialogs.check_dialogs_file(path, f"--documents_{name}_file")
            else:
                documents.check_documents_file(
                    path, config.end_of_document.strip(), f"--documents_{name}_file"
                )
    except (documents.DocumentsError, dialogs.DialogsError) as error:
        raise PrepareError(str(error)) from None
    _check_writable_root(config.datasets_root)
    boundaries = resolve_boundaries(tokenizer, config.document_bos_token, config.document_eos_token)
    try:
        kernel_backend = chunking.resolve_backend(config.kernel_backend)  # type: ignore[arg-type]
    except ImportError as error:
        raise PrepareError(f"--kernel_backend: {error}") from None
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
                samples=[documents.read_sample_text(config.documents_train_file)],
                num_threads=config.num_threads or None,
            )
    except dialogs.DialogsError as error:
        raise PrepareError(str(error)) from None
    except ValueError as error:
        raise PrepareError(f"--tokenizer_engine: {error}") from None
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
        for name, path in splits.items():
            try:
                if renderer is not None:
                    dialog_stats[name] = dialogs.write_dialog_split(
                        path, f"--documents_{name}_file", temporary / name, tokenizer, renderer, dtype=dtype,
                        max_len=config.max_sample_length, min_len=config.min_sample_length,
                        bad_lines=config.bad_lines, encoding_errors=config.encoding_errors,
                    )  # fmt: skip
                    split = dialog_stats[name]
                    stats[name] = SplitStats(split.samples, split.tokens, split.conversations)
                else:
                    assert engine is not None
                    stats[name] = write_split(
                        path,
                        f"--documents_{name}_file",
                        temporary / name,
                        engine,
                        tokenizer,
                        config,
                        dtype,
                        splittable,
                    )
            except (documents.DocumentsError, dialogs.DialogsError) as error:
                raise PrepareError(str(error)) from None
        tokenizer.save(temporary / "tokenizer")
        description = _description(
            config, tokenizer, boundaries, stats, dtype, engine_name, kernel_backend, started
        )
        if renderer is not None:
            dialogs.save_chat_template(temporary / "tokenizer", renderer.template)
            description.update(dialogs.description_keys(renderer.template, dialog_stats))
        (temporary / "description.json").write_text(
            json.dumps(description, indent=2) + "\n", encoding="utf-8"
        )
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


def _description(
    config: PrepareConfig,
    tokenizer: Tokenizer,
    boundaries: DocumentBoundaries,
    stats: dict[str, SplitStats],
    dtype: np.dtype,
    engine_name: str,
    kernel_backend: str,
    started: float,
) -> dict[str, Any]:
    from lmfast import __version__

    description: dict[str, Any] = config.to_dict()
    for name, split in stats.items():
        description[f"number_of_{name}_samples"] = split.samples
        description[f"number_of_{name}_tokens"] = split.tokens
        description[f"number_of_{name}_documents"] = split.documents
        description[f"number_of_{name}_forced_cuts"] = split.forced_cuts
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
