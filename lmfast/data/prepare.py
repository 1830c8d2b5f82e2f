"""`prepare(config) -> Path`: raw documents files -> a tokenized, memory-mapped dataset (docs/architecture.md §1).

Pipeline per split: memory-mapped windows of the file -> documents cut into pieces (native
kernels) -> the fastest tokenizer engine proven identical to the reference -> samples written
straight into a preallocated uint16/int32 buffer -> appended to `corpus.npy`. Everything goes
to a temporary directory beside the final one and is renamed into place only when complete.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lmfast.data import chat_exports, chunking, dialogs, documents, engines, inputs, staging
from lmfast.data.boundaries import DocumentBoundaries, resolve_boundaries
from lmfast.data.config import PrepareConfig
from lmfast.data.description import _description
from lmfast.data.errors import PrepareError
from lmfast.data.pieces import _Tagged, _tagged, iter_input_pieces
from lmfast.data.prefetch import _Prefetched
from lmfast.data.split_inputs import _read_chats, _resolve_inputs, _sample_text, _shard, inputs_digest
from lmfast.data.split_writer import SplitStats, SplitWriter, _require_samples, write_documents, write_split
from lmfast.data.tokenizers import Tokenizer, UnknownTokenizerError, load_tokenizer
from lmfast.data.versions import _check_writable_root, _commit, shard_name

__all__ = [
    "UINT16_VOCAB_LIMIT",
    "PrepareConfig",
    "PrepareError",
    "SplitStats",
    "SplitWriter",
    "inputs_digest",
    "iter_input_pieces",
    "prepare",
    "shard_name",
    "write_documents",
    "write_split",
]

logger = logging.getLogger(__name__)

UINT16_VOCAB_LIMIT = 65536


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


@dataclass(frozen=True)
class _Plan:
    """What `prepare` settled before writing: the inputs, how they are encoded, into what dtype."""

    config: PrepareConfig
    tokenizer: Tokenizer
    splits: dict[str, list[inputs.InputFile]]
    boundaries: DocumentBoundaries
    kernel_backend: str
    renderer: dialogs.DialogRenderer | None  # dialogs and chat exports
    engine: engines.Engine | None  # documents
    chats: chat_exports.ChatSplits | None  # the conversations of a chat export
    dtype: np.dtype
    started: float

    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine is not None else "tokenizers"


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
    """`prepare` once its inputs are checked: choose the encoder, write both splits, commit."""
    renderer, engine = _encoder(config, tokenizer, splits)
    chats = _read_chats(config, splits) if config.documents_format in chat_exports.FORMATS else None
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= UINT16_VOCAB_LIMIT else np.int32)
    plan = _Plan(
        config, tokenizer, splits, boundaries, kernel_backend, renderer, engine, chats, dtype, started
    )
    logger.info(
        "tokenizer %s (%d ids, %s), engine %s, kernels %s",
        tokenizer.name,
        tokenizer.vocab_size,
        dtype,
        plan.engine_name,
        kernel_backend,
    )
    logger.info("document boundaries: %s", boundaries.source)
    dataset_dir, created = _make_dataset_dir(config)
    staging.remove_stale(dataset_dir)
    stage: staging.Staging | None = None
    try:
        stage = staging.Staging(dataset_dir)
        dialog_stats: dict[str, dialogs.DialogSplitStats] = {}
        try:
            if renderer is not None:
                stats, dialog_stats = _write_dialog_splits(plan, stage.directory)
            else:
                stats = _write_document_splits(plan, stage.directory, train_mine, train_batches)
        except (documents.DocumentsError, dialogs.DialogsError) as error:
            raise PrepareError(str(error)) from None
        tokenizer.save(stage.directory / "tokenizer")
        _write_description(plan, stats, dialog_stats, stage.directory)
        final = _commit_dataset(config, stage, dataset_dir)
    except BaseException as error:
        _discard(stage, created)
        if isinstance(error, OSError):  # full disk, read-only or vanished output directory
            raise PrepareError(
                f"--datasets_root: cannot write the dataset in {dataset_dir}: {error.strerror or error}"
            ) from None
        raise
    logger.info("wrote %s in %.2f s", final, time.perf_counter() - started)
    return final


def _encoder(
    config: PrepareConfig, tokenizer: Tokenizer, splits: dict[str, list[inputs.InputFile]]
) -> tuple[dialogs.DialogRenderer | None, engines.Engine | None]:
    """The chat renderer (dialogs) or the fastest engine proven identical to the tokenizer (documents).

    Special tokens in a rendered chat are tokens: only the reference engine encodes them so.
    """
    try:
        if config.is_dialog:
            template = dialogs.load_chat_template(config.chat_template, config.tokenizer_cls_name)
            return dialogs.DialogRenderer(template, tokenizer, config.train_on), None
        engine = engines.select_engine(
            tokenizer,
            config.tokenizer_engine,
            samples=[_sample_text(splits["train"][0], config)],
            num_threads=config.num_threads or None,
        )
        return None, engine
    except dialogs.DialogsError as error:
        raise PrepareError(str(error)) from None
    except ValueError as error:
        raise PrepareError(f"--tokenizer_engine: {error}") from None


def _make_dataset_dir(config: PrepareConfig) -> tuple[Path, list[Path]]:
    """`<datasets_root>/<dataset_name>`, created; also the directories this run created (removed on failure)."""
    dataset_dir = config.datasets_root / config.dataset_name
    created = [p for p in (config.datasets_root, dataset_dir) if not p.exists()]
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrepareError(
            f"--datasets_root: cannot create {dataset_dir}: {error.strerror or error}"
        ) from None
    return dataset_dir, created


def _write_dialog_splits(
    plan: _Plan, temporary: Path
) -> tuple[dict[str, SplitStats], dict[str, dialogs.DialogSplitStats]]:
    """Both splits of a dialogs file or chat export: rendered, encoded, masked; their counts."""
    config, splits = plan.config, plan.splits
    assert plan.renderer is not None
    stats, dialog_stats = {}, {}
    for name in ("train", "valid"):
        path = splits.get(name, splits["train"])[0].path
        flag = f"--documents_{name}_file" if name in splits else "--valid_fraction"
        dialog_stats[name] = dialogs.write_dialog_split(
            path, flag, temporary / name, plan.tokenizer, plan.renderer,
            dtype=plan.dtype, max_len=config.max_sample_length, min_len=config.min_sample_length,
            bad_lines=config.bad_lines, encoding_errors=config.encoding_errors,
            conversations=plan.chats.conversations[name] if plan.chats is not None else None,
        )  # fmt: skip
        split = dialog_stats[name]
        stats[name] = SplitStats(split.samples, split.tokens, split.conversations)
    return stats, dialog_stats


def _write_document_splits(
    plan: _Plan,
    temporary: Path,
    train_mine: list[tuple[int, inputs.InputFile]],
    train_batches: _Prefetched[_Tagged] | None,
) -> dict[str, SplitStats]:
    """Both splits of documents (a held-out fraction or a valid file); each must hold a sample."""
    config, splits = plan.config, plan.splits
    assert plan.engine is not None
    splittable = engines.is_byte_level_bpe(plan.tokenizer)
    write = partial(write_documents, engine=plan.engine, tokenizer=plan.tokenizer, config=config,
                    dtype=plan.dtype, splittable=splittable)  # fmt: skip
    if config.valid_fraction:
        outputs = {"train": temporary / "train", "valid": temporary / "valid"}
        stats = write(train_mine, "--documents_train_file", outputs, batches=train_batches)
    else:
        train_output = {"train": temporary / "train"}
        stats = write(train_mine, "--documents_train_file", train_output, batches=train_batches)
        valid_mine = _shard(splits["valid"], config)
        stats |= write(valid_mine, "--documents_valid_file", {"valid": temporary / "valid"})
    if config.num_shards == 1:
        for name in ("train", "valid"):
            held_out = name == "valid" and config.valid_fraction
            flag = "--valid_fraction" if held_out else f"--documents_{name}_file"
            _require_samples(stats[name], flag, splits["train" if held_out else name], config)
    return stats


def _write_description(
    plan: _Plan,
    stats: dict[str, SplitStats],
    dialog_stats: dict[str, dialogs.DialogSplitStats],
    temporary: Path,
) -> None:
    """description.json: the config, counts, the files read, and the chat template of dialogs."""
    config, splits = plan.config, plan.splits
    description = _description(
        config, plan.tokenizer, plan.boundaries, stats, plan.dtype, plan.engine_name, plan.kernel_backend,
        plan.started,
    )  # fmt: skip
    description["input_files"] = [
        files[k].record(name)
        for name, files in splits.items()
        for k in (range(len(files)) if config.is_dialog else [k for k, _ in _shard(files, config)])
    ]
    if config.num_shards > 1:
        description["shard_inputs_sha256"] = inputs_digest(splits)
    if plan.renderer is not None:
        dialogs.save_chat_template(temporary / "tokenizer", plan.renderer.template)
        description.update(dialogs.description_keys(plan.renderer.template, dialog_stats))
    if plan.chats is not None:
        description.update(plan.chats.description())
        for record in description["input_files"]:
            record["format"] = config.documents_format
    description.write(temporary)


def _commit_dataset(config: PrepareConfig, stage: staging.Staging, dataset_dir: Path) -> Path:
    """Rename the staged dataset into place: its shard's name, else the first free version N."""
    if config.num_shards == 1:
        return _commit(stage, dataset_dir)
    final = dataset_dir / shard_name(config.shard_index, config.num_shards)
    try:
        stage.commit(final)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise PrepareError(
                f"--shard_index: {final} exists already (remove it to prepare this shard again)"
            ) from None
        raise
    return final


def _discard(stage: staging.Staging | None, created: list[Path]) -> None:
    """After a failure: the staged files and the directories this run created go."""
    if stage is not None:
        stage.discard()
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            pass
