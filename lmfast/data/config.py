"""`PrepareConfig`: the flags of `lmfast prepare`, every one checked once, when the config is made."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmfast.data import chat_exports, chunking, dialogs, documents, engines, inputs
from lmfast.data.errors import PrepareError


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
        metadata=_help(
            "Without a valid file: hold out this fraction of the train documents (deterministic)."
        ),
    )
    text_field: str = field(
        default="text", kw_only=True, metadata=_help("JSONL inputs: the field holding the text.")
    )
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
        metadata=_help(
            "telegram/whatsapp: stickers and media without text are dropped, or mark ([photo], ...)."
        ),
    )
    whatsapp_date_order: str = field(
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
            raise PrepareError(
                "documents_valid_file", "is required unless --valid_fraction holds out documents"
            )
        if self.num_shards < 1:
            raise PrepareError("num_shards", f"must be >= 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise PrepareError(
                "shard_index", f"must be in [0, {self.num_shards - 1}], got {self.shard_index}"
            )
        for name in ("text_field", "text_column"):
            if not getattr(self, name):
                raise PrepareError(name, "must not be empty")
        formats = (*dialogs.FORMATS, *chat_exports.FORMATS)
        if self.documents_format not in formats:
            raise PrepareError(
                "documents_format", f"expected one of {formats}, got {self.documents_format!r}"
            )
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
            raise PrepareError(
                "end_of_document", "must not be empty or whitespace (required with --documents_format text)"
            )
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
                    raise PrepareError(
                        name, f"--documents_format {self.documents_format} takes one file per split"
                    )
            chat = self.documents_format in chat_exports.FORMATS
            if (self.valid_fraction and not chat) or self.num_shards > 1:
                flag = "num_shards" if self.num_shards > 1 else "valid_fraction"
                raise PrepareError(flag, f"does not work with --documents_format {self.documents_format}")
        if self.chat_media not in chat_exports.MEDIA:
            raise PrepareError("chat_media", f"expected one of {chat_exports.MEDIA}, got {self.chat_media!r}")
        if self.whatsapp_date_order not in chat_exports.DATE_ORDERS:
            raise PrepareError(
                "whatsapp_date_order",
                f"expected one of {chat_exports.DATE_ORDERS}, got {self.whatsapp_date_order!r}",
            )
        if not 0 <= self.chat_gap_minutes < float("inf"):
            raise PrepareError(
                "chat_gap_minutes", f"must be >= 0 (0 = never split), got {self.chat_gap_minutes}"
            )
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
