"""Each split's input files: found, checked cheaply before any work, and this shard's share of them."""

from __future__ import annotations

import hashlib
import json
import logging
import os

from lmfast.data import chat_exports, dialogs, documents, inputs, records
from lmfast.data.config import PrepareConfig
from lmfast.data.errors import PrepareError

logger = logging.getLogger("lmfast.data.prepare")  # the name `lmfast prepare`'s log lines have always shown


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
