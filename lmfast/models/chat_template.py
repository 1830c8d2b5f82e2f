"""A model's chat template, rendered as transformers' `apply_chat_template` renders it, without torch.

The one renderer of lmfast: `lmfast prepare --documents_format dialogs` renders training
conversations with it (and its `{% generation %}` spans, transformers' assistant mask) and
`lmfast serve` renders chat prompts with it, so a model is served the prompt text it was trained on.

The template is Jinja run in jinja2's `ImmutableSandboxedEnvironment` (templates come from model
repositories: untrusted code) with the options, filters and globals transformers gives it
(`trim_blocks`, `lstrip_blocks`, `loopcontrols`, `tojson`, `raise_exception`, `strftime_now`,
`dict`, `namespace`, the `{% generation %}` tag) and the tokenizer's special tokens as variables.
The same messages therefore render to the same text, and tokenized without added special tokens
(as `apply_chat_template(tokenize=True)` does) to the same ids.

Where a model dir keeps it: `chat_template.jinja` (transformers >= 4.47 saves it there) or the
`chat_template` key of `tokenizer_config.json` (a string, or a list of named templates).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmfast.flags import UserError

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# the named special tokens transformers passes to every template (SPECIAL_TOKENS_ATTRIBUTES)
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(UserError):
    """The template is missing or broken, or it refused the messages (its `raise_exception`)."""


class ChatTemplate:
    """A compiled chat template plus the special-token variables it is rendered with."""

    def __init__(
        self, source: str, special_tokens: Mapping[str, str] | None = None, origin: str = ""
    ) -> None:
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.origin = origin
        try:
            self._template = _compile(source)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(
                f"{origin or 'chat template'}: line {error.lineno}: {error.message}"
            ) from None

    @classmethod
    def from_model_dir(cls, directory: str | Path) -> ChatTemplate | None:
        """The template a model dir carries, or None when it has none."""
        directory = Path(directory)
        special = read_special_tokens(directory)
        jinja_file = directory / TEMPLATE_FILE
        if jinja_file.is_file():
            return cls(jinja_file.read_text(encoding="utf-8"), special, str(jinja_file))
        config = _read_json(directory / TOKENIZER_CONFIG)
        source = _pick_template(config.get("chat_template"))
        if source is None:
            return None
        return cls(source, special, f"{directory / TOKENIZER_CONFIG}: chat_template")

    @classmethod
    def from_file(cls, path: str | Path, model_dir: str | Path | None = None) -> ChatTemplate:
        """A template file given by the user (`--chat_template`), with the model's special tokens.

        Raises:
            ChatTemplateError: the file is missing, unreadable, empty or not valid Jinja.
        """
        path = Path(path)
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ChatTemplateError(f"{path}: cannot read the chat template ({error})") from None
        if not source.strip():
            raise ChatTemplateError(f"{path}: the chat template file is empty")
        special = read_special_tokens(Path(model_dir)) if model_dir is not None else {}
        return cls(source, special, str(path))

    @property
    def has_generation_tags(self) -> bool:
        """Whether the template marks the trained assistant text with `{% generation %}` blocks."""
        return bool(GENERATION_TAG.search(self.source))

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """The prompt text for `messages` (dicts with role and content; None values are dropped, as
        transformers drops them).

        Raises:
            ChatTemplateError: the template raised (e.g. "roles must alternate") or failed.
        """
        return self.render_tracked(messages, add_generation_prompt, **variables)[0]

    def render_tracked(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> tuple[str, list[tuple[int, int]]]:
        """`render`, and the [start, end) character spans its `{% generation %}` blocks rendered (what
        transformers' `return_assistant_tokens_mask` marks; none without such blocks).

        Raises:
            ChatTemplateError: the template raised (e.g. "roles must alternate") or failed.
        """
        chat = [
            _with_reasoning_aliases({k: v for k, v in dict(m).items() if v is not None}) for m in messages
        ]
        context = {**self.special_tokens, **variables}
        blocks: list[str] = []
        spans: list[tuple[int, int]] = []
        try:
            with _tracking(blocks, spans):
                for block in self._template.generate(
                    messages=chat,
                    tools=None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    **context,
                ):
                    blocks.append(block)
            return "".join(blocks), spans
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"the chat template refused these messages: {error}") from None
        except (TypeError, KeyError, AttributeError, IndexError, ValueError) as error:
            raise ChatTemplateError(f"the chat template failed on these messages: {error}") from None


# names a message's reasoning goes by; transformers fills the first two from any of them
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _with_reasoning_aliases(message: dict[str, Any]) -> dict[str, Any]:
    """A message's reasoning under every name templates read (`reasoning_content`, and `thinking` for
    gpt-oss), as transformers' `apply_chat_template` passes it."""
    reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
    return (
        message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}
    )


def read_special_tokens(directory: Path) -> dict[str, str]:
    """bos_token, eos_token, ... as strings, from special_tokens_map.json then tokenizer_config.json."""
    tokens: dict[str, str] = {}
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
        tokens.update(special_tokens_of(_read_json(directory / name)))
    return tokens


def special_tokens_of(config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens a tokenizer config (or special-tokens map) holds, as strings: the
    variables transformers renders every template with (its `special_tokens_map`)."""
    tokens: dict[str, str] = {}
    for key in SPECIAL_TOKEN_NAMES:
        value = config.get(key)
        if isinstance(value, dict):  # an AddedToken written out: {"content": ..., "lstrip": ...}
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ChatTemplateError(f"{path}: not valid JSON ({error})") from None
    return value if isinstance(value, dict) else {}


def _pick_template(value: Any) -> str | None:
    """tokenizer_config's `chat_template`: a string, or [{"name": ..., "template": ...}] (the "default" one)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


# (blocks rendered so far, spans found) of the render in progress on this thread/task, if tracked
_TRACKED: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar(
    "chat_template_spans", default=None
)


@contextmanager
def _tracking(blocks: list[str], spans: list[tuple[int, int]]) -> Iterator[None]:
    token = _TRACKED.set((blocks, spans))
    try:
        yield
    finally:
        _TRACKED.reset(token)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks: its body is
    rendered as is, and its span in the text recorded (as transformers' AssistantTracker does)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        text = caller()
        tracked = _TRACKED.get()
        if tracked is not None:
            blocks, spans = tracked
            start = sum(map(len, blocks))
            spans.append((start, start + len(text)))
        return text


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # jinja's own tojson escapes HTML characters; templates expect plain JSON
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates without handing them the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace, refusing underscore names (no way to CPython internals), as transformers."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore attributes ({name!r})"
            )


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    return env.from_string(source)
