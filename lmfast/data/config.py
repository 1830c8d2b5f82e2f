"""`PrepareConfig`: the flags of `lmfast prepare`, every one checked once, when the config is made."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmfast.data import chat_exports, chunking, dialogs, engines, inputs
from lmfast.data.errors import PrepareError
from lmfast.field_rules import bounds, check_fields

DocumentsFormat = Literal[dialogs.DialogFormat, chat_exports.ChatFormat]
"""`--documents_format`: delimited text, dialogs JSONL, or a chat export."""


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
        metadata=_help("Without a valid file: hold out this fraction of the train documents (deterministic).")
        | bounds(ge=0, lt=1),
    )
    text_field: str = field(
        default="text", kw_only=True, metadata=_help("JSONL inputs: the field holding the text.")
    )
    text_column: str = field(
        default="text", kw_only=True, metadata=_help("Parquet inputs: the string column holding the text.")
    )
    num_shards: int = field(
        default=1,
        kw_only=True,
        metadata=_help("Split the inputs into this many shards (one job each).") | bounds(ge=1),
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
    max_sample_length: int = field(
        metadata=_help("Maximum tokens per sample; longer documents are cut.") | bounds(ge=1, said="positive")
    )
    min_sample_length: int = field(
        default=10, metadata=_help("Samples shorter than this are dropped.") | bounds(ge=1, said="positive")
    )
    datasets_root: Path = field(default=Path("data/datasets"), metadata=_help("Root directory of datasets."))
    dataset_name: str = field(
        default="default", metadata=_help("Dataset name; each run writes <root>/<name>/<N>/.")
    )
    tokenizer_engine: engines.EngineName = field(
        default="auto", metadata=_help("auto (fastest proven identical), gigatoken, tiktoken or tokenizers.")
    )
    encoding_errors: Literal["strict", "replace", "ignore"] = field(
        default="strict",
        metadata=_help("Invalid UTF-8: strict (error saying where), replace (U+FFFD) or ignore."),
    )
    num_threads: int = field(default=0, metadata=_help("Tokenizer threads; 0 = all cores.") | bounds(ge=0))
    window_mb: float = field(
        default=16,
        metadata=_help("MiB of input mapped at a time (bounds peak memory).")
        | bounds(gt=0, finite=True, said="a positive number"),
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
    documents_format: DocumentsFormat = field(
        default="text",
        metadata=_help(
            'text (delimiter-separated documents), dialogs (JSONL, one {"messages": [...]} a line), '
            "telegram (Telegram Desktop's JSON export) or whatsapp (an exported WhatsApp chat)."
        ),
    )
    chat_template: str = field(
        default="", metadata=_help("dialogs: a jinja chat template file; default: the tokenizer's own.")
    )
    train_on: dialogs.TrainOn = field(
        default="assistant", metadata=_help("dialogs: tokens trained on, assistant (turns) or all.")
    )
    bad_lines: dialogs.BadLines = field(
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
        metadata=_help("telegram/whatsapp: a silence this long starts a new conversation; 0 = never.")
        | bounds(ge=0, finite=True, hint="0 = never split"),
    )
    chat_media: chat_exports.Media = field(
        default="drop",
        metadata=_help(
            "telegram/whatsapp: stickers and media without text are dropped, or mark ([photo], ...)."
        ),
    )
    whatsapp_date_order: chat_exports.DateOrder = field(
        default="auto", metadata=_help("whatsapp: date order, auto (detected), DMY, MDY or YMD.")
    )
    redact: bool = field(
        default=False,
        metadata=_help(
            "telegram/whatsapp: replace e-mail addresses, links and phone numbers with placeholders."
        ),
    )

    def __post_init__(self) -> None:
        """Every option is checked here, once; the kernels and engines assume checked options.
        Bounds and choices are the fields' metadata and types (`check_fields`); the rules below tie
        fields together, read the inputs or check text, so they stay code.

        Raises:
            PrepareError: with `.field` (the flag) and `.rule` (what it must satisfy).
        """
        self.documents_train_file = _paths(self.documents_train_file)
        self.documents_valid_file = _paths(self.documents_valid_file)
        self.datasets_root = Path(self.datasets_root)
        if not self.documents_train_file:
            raise PrepareError("documents_train_file", "is required (files, globs or directories)")
        check_fields(self, PrepareError)
        if self.valid_fraction and self.documents_valid_file:
            raise PrepareError("valid_fraction", "give --documents_valid_file or --valid_fraction, not both")
        if not self.valid_fraction and not self.documents_valid_file:
            try:  # in command-line order: a train file that is not there is the first thing wrong
                inputs.expand(self.documents_train_file, "--documents_train_file")
            except inputs.InputError as error:
                raise PrepareError(str(error)) from None
            raise PrepareError(
                "documents_valid_file", "is required unless --valid_fraction holds out documents"
            )
        if not 0 <= self.shard_index < self.num_shards:
            raise PrepareError(
                "shard_index", f"must be in [0, {self.num_shards - 1}], got {self.shard_index}"
            )
        for name in ("text_field", "text_column"):
            if not getattr(self, name):
                raise PrepareError(name, "must not be empty")
        if self.bad_lines != "error" and self.documents_format != "dialogs":
            raise PrepareError(
                "bad_lines",
                "applies to --documents_format dialogs only (a bad line of a document file is always an error)",
            )
        delimiter = self.end_of_document.strip()
        if self.documents_format == "text" and not delimiter and self._may_be_text():
            raise PrepareError(
                "end_of_document", "must not be empty or whitespace (required with --documents_format text)"
            )
        if any(c.isspace() for c in delimiter):
            raise PrepareError("end_of_document", f"{delimiter!r} must not contain whitespace")
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
        for name in ("document_bos_token", "document_eos_token"):
            if not getattr(self, name):
                raise PrepareError(name, "must be auto, none or a token, got an empty string")
        if not self.dataset_name or "/" in self.dataset_name or self.dataset_name in (".", ".."):
            raise PrepareError("dataset_name", f"{self.dataset_name!r} is not a valid directory name")

        if self.is_dialog:
            for name in ("documents_train_file", "documents_valid_file"):
                if len(getattr(self, name)) > 1:
                    raise PrepareError(
                        name, f"--documents_format {self.documents_format} takes one file per split"
                    )
            chat = self.documents_format in chat_exports.FORMATS
            if (self.valid_fraction and not chat) or self.num_shards > 1:
                flag = "num_shards" if self.num_shards > 1 else "valid_fraction"
                raise PrepareError(flag, f"does not work with --documents_format {self.documents_format}")
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
