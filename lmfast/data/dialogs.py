"""Dialog datasets: JSONL conversations -> chat-template token ids plus a loss mask (`--documents_format dialogs`).

Each line of a dialogs file is one conversation in the TRL/OpenAI fine-tuning format,
`{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}`.
It is rendered exactly as `tokenizer.apply_chat_template(messages, tokenize=True)` renders it, by
lmfast's one chat-template renderer (`lmfast.models.chat_template`, which `lmfast serve` renders
prompts with too: a model is served the prompt text it was trained on), and the text is encoded
with the dataset's `tokenizers` backend with special tokens recognised, `add_special_tokens=False`,
so the ids equal transformers'.

Which tokens are trained on (`loss_mask.npy`, uint8, aligned with `corpus.npy`):
- `--train_on assistant` (default): the tokens of the assistant turns. A turn's characters are
  the `{% generation %}` blocks where the template has them (transformers' assistant mask);
  otherwise what the assistant message adds after the generation prompt (`render(messages[:i],
  add_generation_prompt=True)`) up to the end of `render(messages[:i+1])`, trailing whitespace
  excluded: the answer and its end-of-turn token, not the role header. A token is trained on when
  it overlaps such a span, transformers' rule.
- `--train_on all`: every token.

A conversation longer than `--max_sample_length` tokens is cut into several samples at turn
boundaries: before a user (or system, tool) message, so that an answer stays with its question and
each sample starts a new exchange. One exchange longer than `--max_sample_length` is truncated
there and the rest of it is dropped (counted as `number_of_<split>_tokens_truncated`), rather than
starting a sample in the middle of an answer. Samples shorter than `--min_sample_length` or without
any trained token are dropped.
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmfast.data.npy_writer import NpyAppender
from lmfast.data.tokenizers import Tokenizer
from lmfast.flags import UserError
from lmfast.models.chat_template import TEMPLATE_FILE, ChatTemplate, ChatTemplateError, special_tokens_of
from lmfast.models.dataset import LOSS_MASK_FILE, split_key

logger = logging.getLogger(__name__)

DialogFormat = Literal["text", "dialogs"]
TrainOn = Literal["assistant", "all"]
BadLines = Literal["error", "skip"]
FORMATS: tuple[str, ...] = typing.get_args(DialogFormat)
TRAIN_ON: tuple[str, ...] = typing.get_args(TrainOn)
BAD_LINES: tuple[str, ...] = typing.get_args(BadLines)
_BATCH = 512  # conversations encoded per `encode_batch` call


class DialogsError(UserError):
    """A dialogs file or chat template cannot be used; the message names the file (and line) and the problem."""


def _template_from_config(config_file: Path) -> str | None:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    template = config.get("chat_template")
    if isinstance(template, list):  # transformers' named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def load_chat_template(chat_template: str, tokenizer_spec: str) -> ChatTemplate:
    """`--chat_template FILE`, else the tokenizer's own (`chat_template.jinja` or tokenizer_config.json's key).

    Its `origin` is where it came from (recorded in description.json); `DialogRenderer` renders it
    with the tokenizer's special tokens.

    Raises:
        DialogsError: the file is missing, empty or not valid Jinja, or the tokenizer has no template.
    """
    try:
        return _load_chat_template(chat_template, tokenizer_spec)
    except ChatTemplateError as error:
        raise DialogsError(f"--chat_template: {error}") from None


def _load_chat_template(chat_template: str, tokenizer_spec: str) -> ChatTemplate:
    if chat_template:
        path = Path(chat_template).expanduser()
        if not path.is_file():
            raise DialogsError(f"--chat_template: file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DialogsError(f"--chat_template: cannot read {path}: {error}") from None
        if not text.strip():
            raise DialogsError(f"--chat_template: file is empty: {path}")
        return ChatTemplate(text, origin=str(path))
    path = Path(tokenizer_spec).expanduser()
    if path.exists():
        directory = path if path.is_dir() else path.parent
        jinja = directory / TEMPLATE_FILE
        if jinja.is_file() and jinja.read_text(encoding="utf-8").strip():
            return ChatTemplate(jinja.read_text(encoding="utf-8"), origin=str(jinja))
        config_file = directory / "tokenizer_config.json"
        text = _template_from_config(config_file) if config_file.is_file() else None
        if text is not None:
            return ChatTemplate(text, origin=str(config_file))
    raise DialogsError(
        f"--chat_template: tokenizer {tokenizer_spec!r} has no chat template (no {TEMPLATE_FILE} nor "
        "chat_template in tokenizer_config.json); pass --chat_template FILE"
    )


def save_chat_template(tokenizer_dir: Path, template: ChatTemplate) -> None:
    """Write the template beside the dataset's tokenizer.json, where transformers' `from_pretrained` reads it."""
    (tokenizer_dir / TEMPLATE_FILE).write_text(template.source, encoding="utf-8")


def check_dialogs_file(path: Path, flag: str) -> None:
    """Cheap checks before any work: the file exists, is a regular file, is not empty."""
    if not path.exists():
        raise DialogsError(f"{flag}: file not found: {path}")
    if not path.is_file():
        raise DialogsError(f"{flag}: not a regular file: {path}")
    try:
        if path.stat().st_size == 0:
            raise DialogsError(f"{flag}: file is empty: {path}")
        with path.open("rb"):
            pass
    except PermissionError:
        raise DialogsError(f"{flag}: permission denied: {path}") from None


def _messages_of(line: str) -> list[dict[str, Any]]:
    """The validated `messages` of one JSONL line; ValueError with the problem otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f'expected a JSON object with "messages", got {type(record).__name__}')
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list of {"role", "content"} objects')
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{k}] is {type(message).__name__}, expected an object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f'messages[{k}]["{key}"] must be a string')
    # transformers drops None-valued keys before rendering; keep what the template may read
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


@dataclass
class LineCounts:
    """Lines of one dialogs file: conversations read and bad lines skipped (`--bad_lines skip`)."""

    conversations: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def skip(self, where: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < 3:
            self.bad_examples.append(where)


def iter_conversations(
    path: Path, flag: str, *, bad_lines: str = "error", encoding_errors: str = "strict", counts: LineCounts
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield ("line N", messages) per non-blank line, streaming.

    Raises:
        DialogsError: a bad line (invalid UTF-8 or JSON, not a conversation) with `bad_lines="error"`.
    """
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8", errors=encoding_errors)
            except UnicodeDecodeError as error:
                problem = f"invalid UTF-8 at column {error.start + 1}; fix the file or pass --encoding_errors replace"
                if bad_lines == "skip":
                    counts.skip(f"line {number}: {problem}")
                    continue
                raise DialogsError(f"{flag}: {path} line {number}: {problem}") from None
            if not line.strip():
                continue
            try:
                messages = _messages_of(line.rstrip("\r\n"))
            except ValueError as error:
                if bad_lines == "skip":
                    counts.skip(f"line {number}: {error}")
                    continue
                raise DialogsError(f"{flag}: {path} line {number}: {error}") from None
            counts.conversations += 1
            yield f"line {number}", messages


@dataclass
class Rendered:
    """One conversation rendered: its text, the trained character spans and the message boundaries.

    Attributes:
        text: what `apply_chat_template(messages, tokenize=False)` returns.
        spans: sorted, disjoint [start, end) character spans whose tokens are trained on.
        boundaries: character offsets where a non-assistant message i >= 1 starts (a turn boundary),
            wherever the template renders the first i messages as a prefix of the whole.
    """

    text: str
    spans: list[tuple[int, int]]
    boundaries: list[int]


class DialogRenderer:
    """Renders conversations with a chat template exactly as transformers' `apply_chat_template` does."""

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer, train_on: str = "assistant") -> None:
        # what apply_chat_template passes to the template besides the messages (its special_tokens_map)
        special = special_tokens_of(tokenizer.extra_config)
        attributes = {
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
        }
        special.update({k: v for k, v in attributes.items() if isinstance(v, str)})
        self.template = ChatTemplate(template.source, special, template.origin)
        self.special_tokens = special
        self.train_on = train_on
        self._warned_header = False

    def _render(
        self, conversations: list[list[dict[str, Any]]], *, generation_prompt: bool
    ) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """Each conversation's text and `{% generation %}` spans (transformers' render_jinja_template)."""
        rendered = [
            self.template.render_tracked(c, add_generation_prompt=generation_prompt) for c in conversations
        ]
        return [text for text, _ in rendered], [spans for _, spans in rendered]

    def render(self, messages: list[dict[str, Any]]) -> Rendered:
        """Render one conversation and find its trained spans and turn boundaries.

        Raises:
            ValueError: the template refused the conversation, or (no generation tags) an assistant
                turn whose position in the text cannot be found.
        """
        n = len(messages)
        tagged = self.template.has_generation_tags and self.train_on == "assistant"
        try:
            (texts, indices) = self._render([messages[:i] for i in range(1, n + 1)], generation_prompt=False)
        except ValueError as error:  # ChatTemplateError: the template raised or failed
            raise ValueError(str(error)) from None
        text = texts[-1]
        ends = [len(t) if text.startswith(t) else -1 for t in texts]  # end of message i's rendering
        boundaries = [
            ends[i - 1] for i in range(1, n) if messages[i]["role"] != "assistant" and ends[i - 1] > 0
        ]
        if self.train_on == "all":
            return Rendered(text, [(0, len(text))] if text else [], boundaries)
        if tagged:
            spans = [(int(a), int(b)) for a, b in indices[-1] if b > a]
            return Rendered(text, spans, boundaries)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        prompts: list[str | None] = [None] * n
        for group in ([i for i in assistant if i == 0], [i for i in assistant if i > 0]):
            if not group:
                continue
            try:
                (prompt_texts, _) = self._render([messages[:i] for i in group], generation_prompt=True)
            except ValueError:  # ChatTemplateError
                continue  # e.g. a template that cannot render an empty prefix: the header is trained then
            for i, prompt in zip(group, prompt_texts, strict=True):
                prompts[i] = prompt
        spans = []
        for i in assistant:
            end = ends[i]
            start = ends[i - 1] if i > 0 else 0
            if end < 0 or start < 0:
                raise ValueError(
                    f"the chat template does not render messages[:{i + 1}] as the start of the whole "
                    "conversation, so the assistant turn cannot be located; add {% generation %} tags to it"
                )
            prompt = prompts[i]
            if prompt is not None and text.startswith(prompt) and start <= len(prompt) <= end:
                start = len(prompt)
            elif not self._warned_header:
                self._warned_header = True
                logger.warning(
                    "the chat template's generation prompt is not where the assistant turn starts: "
                    "the role header of assistant turns is trained on too"
                )
            end = start + len(text[start:end].rstrip())
            if end > start:
                spans.append((start, end))
        return Rendered(text, spans, boundaries)


def token_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """uint8 per token: 1 where the token's [start, end) characters overlap a span (transformers' rule)."""
    mask = np.zeros(len(offsets), dtype=np.uint8)
    if not spans or not len(offsets):
        return mask
    span_starts = np.array([s for s, _ in spans], dtype=np.int64)
    span_ends = np.array([e for _, e in spans], dtype=np.int64)
    k = np.searchsorted(span_ends, offsets[:, 0], side="right")  # first span ending after the token starts
    inside = k < len(spans)
    mask[inside] = offsets[inside, 1] > span_starts[k[inside]]
    return mask


def cut_at_turns(length: int, boundaries: list[int], max_len: int) -> tuple[list[tuple[int, int]], int]:
    """Cut [0, length) tokens into [start, end) samples of at most `max_len` at turn boundaries.

    Each sample starts at 0 or a boundary and ends at the last boundary within `max_len`; where
    none is in reach, it ends at `max_len` tokens and the tokens up to the next boundary are dropped.

    Returns:
        The samples and the number of tokens dropped.
    """
    stops = sorted({b for b in boundaries if 0 < b < length} | {length})
    pieces, start, dropped = [], 0, 0
    while start < length:
        reachable = [b for b in stops if start < b <= start + max_len]
        if reachable:
            pieces.append((start, reachable[-1]))
            start = reachable[-1]
        else:
            following = next(b for b in stops if b > start)
            pieces.append((start, start + max_len))
            dropped += following - start - max_len
            start = following
    return pieces, dropped


@dataclass
class DialogSplitStats:
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    conversations: int = 0
    conversations_cut: int = 0
    samples_dropped: int = 0
    tokens_truncated: int = 0
    bad_lines: int = 0


def write_dialog_split(
    path: Path,
    flag: str,
    out_dir: Path,
    tokenizer: Tokenizer,
    renderer: DialogRenderer,
    *,
    dtype: np.dtype,
    max_len: int,
    min_len: int,
    bad_lines: str = "error",
    encoding_errors: str = "strict",
    conversations: Iterable[list[dict[str, Any]]] | None = None,
) -> DialogSplitStats:
    """Render, encode and cut one dialogs file into `out_dir/{corpus,sample_start_positions,loss_mask}.npy`.

    `conversations`, when given, are the file's conversations already read (a chat export's,
    `chat_exports`), rendered and written exactly as a dialogs file's lines.

    Raises:
        DialogsError: a bad line (with `bad_lines="error"`), or no sample at all.
    """
    out_dir.mkdir()
    stats, counts = DialogSplitStats(), LineCounts()
    backend = tokenizer.backend
    with (
        NpyAppender(out_dir / "corpus.npy", dtype) as corpus,
        NpyAppender(out_dir / "sample_start_positions.npy", np.int64) as starts,
        NpyAppender(out_dir / LOSS_MASK_FILE, np.uint8) as masks,
    ):
        batch: list[Rendered] = []

        def flush() -> None:
            encodings = backend.encode_batch([r.text for r in batch], add_special_tokens=False)
            kept_ids, kept_masks, lengths = [], [], []  # written once per batch, not once per sample
            for rendered, encoding in zip(batch, encodings, strict=True):
                ids = np.asarray(encoding.ids, dtype=dtype)
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                mask = token_mask(offsets, rendered.spans)
                token_starts = offsets[:, 0]
                boundaries = [
                    int(np.searchsorted(token_starts, char, side="left")) for char in rendered.boundaries
                ]
                pieces, dropped = cut_at_turns(len(ids), boundaries, max_len)
                stats.conversations_cut += len(pieces) > 1
                stats.tokens_truncated += dropped
                for a, b in pieces:
                    trained = int(mask[a:b].sum())
                    if b - a < min_len or trained == 0:
                        stats.samples_dropped += 1
                        continue
                    kept_ids.append(ids[a:b])
                    kept_masks.append(mask[a:b])
                    lengths.append(b - a)
                    stats.trained_tokens += trained
            if lengths:
                offsets_in_batch = np.concatenate(([0], np.cumsum(lengths[:-1]))).astype(np.int64)
                starts.append(offsets_in_batch + corpus.length)
                corpus.append(np.concatenate(kept_ids))
                masks.append(np.concatenate(kept_masks))
            batch.clear()

        if conversations is None:
            read = iter_conversations(
                path, flag, bad_lines=bad_lines, encoding_errors=encoding_errors, counts=counts
            )
        else:
            read = _numbered(conversations, counts)
        for where, messages in read:
            try:
                batch.append(renderer.render(messages))
            except ValueError as error:
                if bad_lines == "skip":
                    counts.skip(f"{where}: {error}")
                    counts.conversations -= 1
                    continue
                raise DialogsError(f"{flag}: {path} {where}: {error}") from None
            if len(batch) >= _BATCH:
                flush()
        if batch:
            flush()
        stats.samples, stats.tokens = starts.length, corpus.length
    stats.conversations, stats.bad_lines = counts.conversations, counts.bad_lines
    if counts.bad_lines:
        logger.warning(
            "%s: skipped %d bad line(s) of %s, e.g. %s",
            flag,
            counts.bad_lines,
            path,
            "; ".join(counts.bad_examples),
        )
    if stats.samples == 0:
        raise DialogsError(
            f"{flag}: {path} gave no samples ({stats.conversations} conversations, none with a trained token "
            f"in a sample of at least --min_sample_length {min_len} tokens)"
        )
    return stats


def _numbered(
    conversations: Iterable[list[dict[str, Any]]], counts: LineCounts
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for number, messages in enumerate(conversations, start=1):
        counts.conversations += 1
        yield f"conversation {number}", messages


def description_keys(template: ChatTemplate, stats: dict[str, DialogSplitStats]) -> dict[str, Any]:
    """What description.json records about a dialog dataset besides the flags."""
    keys: dict[str, Any] = {"chat_template_source": template.origin, "loss_mask_file": LOSS_MASK_FILE}
    for name, split in stats.items():
        for what in (
            "trained_tokens",
            "conversations",
            "conversations_cut",
            "samples_dropped",
            "tokens_truncated",
            "bad_lines",
        ):
            keys[split_key(name, what)] = getattr(split, what)
    return keys
