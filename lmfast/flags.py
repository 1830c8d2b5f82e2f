"""Command-line flags built from a config dataclass: the one parser builder of every subcommand.

A config dataclass is the single description of a subcommand's options: each field is a `--flag`
(flag = field = saved-config key), its annotation gives the type (`Literal` gives the choices,
`X | None` accepts `none`, `list[X]` is repeatable), its default is shown in `--help`, and the
string literal under the field (an attribute docstring, as in litgpt's and jsonargparse's
configs) is its help text. `LMFAST_<FIELD>` environment variables go through the same parsing.
Field metadata may name a field's own variable (`env`, e.g. `TELEGRAM_BOT_TOKEN`) and a converter
of the whole text (`parse`, e.g. comma-separated ids; its ValueError message is the flag's error).

Imports only the standard library, so `lmfast <command> --help` stays instant.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import operator
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "LMFAST_"
Parsed = TypeVar("Parsed")
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


class UserError(ValueError):
    """Bad input from the user: the one base of every stage's bad-input error.

    `.field` names the flag, file or request field; `.rule` says what is wrong with it; `str()` is
    the one line a command prints after `<prog>: error: ` (`run`) and an HTTP 4xx carries. A stage
    shapes that line in `line()` (e.g. "--field: rule"). `UserError(message)` carries a message
    that already names what it is about: `.field` is then empty and `.rule` is the message.
    """

    def __init__(self, field: str, rule: str | None = None) -> None:
        if rule is None:
            field, rule = "", field
        self.field = field
        self.rule = rule
        super().__init__(self.line())

    def line(self) -> str:
        """The one-line message: "field: rule", or the rule alone when no field is named."""
        return f"{self.field}: {self.rule}" if self.field else self.rule


class FlagError(UserError):
    """A flag or environment value that does not parse; the message names it."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise `FlagError` (one line, no usage dump) instead of exiting 2.

    The caller prints `<prog>: error: <message>` and returns 2, so every subcommand reports bad
    input the same way; `--help` still exits 0 through `SystemExit`. Flags are exact: no prefix
    abbreviations (`--max_step` is not `--max_steps`), and an unknown `--flag` is reported before
    anything else (a misspelt required flag is named as misspelt, not as missing), with the closest
    valid flag.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise FlagError(message)

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = sys.argv[1:] if args is None else list(args)
        unknown = unknown_flag(self, args)
        if unknown is not None:
            self.error(unknown)
        return super().parse_known_args(args, namespace)


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line of at most `limit` characters: what a command prints before exit 2,
    an HTTP 4xx carries, or a log line quotes (library errors often span lines or dump JSON)."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unknown_flag(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """The error for the first `--flag` in ARGS that PARSER does not define, naming the closest one.

    Stops at `--` and at a subcommand's name (the subcommand's own parser checks the rest).
    """
    known = sorted(flag for flag in parser._option_string_actions if flag.startswith("--"))
    subcommands = {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
    for arg in args:
        if arg == "--" or arg in subcommands:
            return None
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        if flag in known:
            continue
        # compared without the dashes every flag shares, which would make any two look alike
        close = difflib.get_close_matches(flag[2:], [k[2:] for k in known], n=1, cutoff=0.6)
        hint = f"did you mean --{close[0]}?" if close else f"see {parser.prog} --help"
        return f"unknown flag {flag} ({hint})"
    return None


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string literal under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (frozen app, REPL): help falls back to metadata
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    for spec in dataclasses.fields(cls):
        if spec.name not in docs and spec.metadata.get("help"):
            docs[spec.name] = str(spec.metadata["help"])
    return docs


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_number(text: str) -> int | float:
    """An int when it looks like one (Lightning reads ints as batch counts, floats as fractions)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _named(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """argparse prints a converter's `__name__` in its 'invalid X value' message."""
    parse.__name__ = name  # type: ignore[attr-defined]
    return parse


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (hint, False)."""
    if _is_union(hint):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        return (members[0] if len(members) == 1 else functools.reduce(operator.or_, members)), optional
    return hint, False


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """How one field reads from text: its converter, argparse choices and repetition."""

    parse: Callable[[str], Any]
    choices: tuple[Any, ...] | None = None
    is_list: bool = False
    is_bool: bool = False


def flag_spec(hint: Any) -> FlagSpec:
    """The parsing rule for a resolved type hint (see the module docstring for what maps to what)."""
    base, optional = _strip_optional(hint)
    origin = typing.get_origin(base)
    if origin in (list, tuple) and typing.get_args(base):
        item = flag_spec(typing.get_args(base)[0])
        return FlagSpec(item.parse, item.choices, is_list=True)
    if origin is typing.Literal:
        values = typing.get_args(base)
        kinds = {type(value) for value in values}
        kind = kinds.pop() if len(kinds) == 1 else str
        parse: Callable[[str], Any] = _parse_bool if kind is bool else kind
        spec = FlagSpec(_optional(parse) if optional else parse, tuple(values))
        return spec
    if _is_union(base):  # e.g. `int | float`: the narrowest number that parses
        parse = _parse_number
    elif base is bool:
        return FlagSpec(_optional(_parse_bool) if optional else _parse_bool, is_bool=True)
    elif base in (int, float, str, Path):
        parse = base
    else:
        parse = str
    return FlagSpec(_optional(parse) if optional else parse)


def field_spec(spec: dataclasses.Field, hint: Any) -> FlagSpec:
    """The parsing rule of one field: its metadata's `parse` converter, else its type's rule."""
    parse = spec.metadata.get("parse")
    if parse is None:
        return flag_spec(hint)

    def parse_text(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:  # argparse prints an ArgumentTypeError's message as it is
            raise argparse.ArgumentTypeError(str(error)) from None

    return FlagSpec(_named(parse_text, getattr(parse, "__name__", "value")))


def env_variable(spec: dataclasses.Field, prefix: str | None) -> str | None:
    """The environment variable of a field: its metadata's `env`, else `<PREFIX><FIELD>` (or none)."""
    return spec.metadata.get("env") or (prefix + spec.name.upper() if prefix else None)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() in _NONE_WORDS else parse(text)

    return _named(parse_optional, getattr(parse, "__name__", "value"))


def _shown(value: Any) -> str:
    if value is None:
        return "none"  # the word the flags take for it
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    positional: Iterable[str] = (),
    aliases: Mapping[str, Iterable[str]] | None = None,
    exclude: Iterable[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env_prefix: str | None = None,
) -> None:
    """Add one argument per field of dataclass CLS to PARSER.

    Only what the command line gives reaches the namespace (`argparse.SUPPRESS` defaults), so the
    dataclass's own defaults (and environment values, when merged) stay the single source.
    `positional` fields become optional positional arguments; `overrides` replaces argparse
    keywords of a field (e.g. `nargs="?"` for `--resume [DIR]`).
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    aliases = aliases or {}
    overrides = overrides or {}
    positional, exclude = set(positional), set(exclude)
    for spec in dataclasses.fields(cls):
        name = spec.name
        if name in exclude or not spec.init:
            continue
        rule = field_spec(spec, hints[name])
        default = spec.default
        if spec.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = spec.default_factory()  # type: ignore[misc]
        help_text = docs.get(name, "")
        if default is not dataclasses.MISSING and default != "":
            help_text += f" (default: {_shown(default)})"
        variable = env_variable(spec, env_prefix)
        if variable:
            help_text += f" [env {variable}]"
        kwargs: dict[str, Any] = {"type": rule.parse, "default": argparse.SUPPRESS, "help": help_text.strip()}
        if rule.choices is not None:
            kwargs["choices"] = rule.choices
            kwargs["metavar"] = "{" + ",".join(map(str, rule.choices)) + "}"
        if rule.is_list:
            kwargs.update(action="extend", nargs="+")
        elif rule.is_bool:
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        if default is dataclasses.MISSING and name not in positional:
            kwargs["required"] = True
        kwargs.update(overrides.get(name, {}))
        if name in positional:
            kwargs.setdefault("nargs", "?")
            kwargs.pop("metavar", None)
            parser.add_argument(name, **kwargs)
        else:
            parser.add_argument(f"--{name}", *aliases.get(name, ()), dest=name, **kwargs)


def env_values(
    cls: type, prefix: str | None = ENV_PREFIX, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Field values from `<PREFIX><FIELD>` variables (or each field's own `env`), parsed as the flags are.

    Raises:
        FlagError: a variable that does not parse; the message names it.
    """
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        variable = env_variable(spec, prefix)
        raw = environ.get(variable) if variable else None
        if raw is None:
            continue
        rule = field_spec(spec, hints[spec.name])
        try:
            if rule.is_list:
                parsed: Any = [rule.parse(part.strip()) for part in raw.split(",") if part.strip()]
                bad = [v for v in parsed if rule.choices is not None and v not in rule.choices]
            else:
                parsed = rule.parse(raw)
                bad = [parsed] if rule.choices is not None and parsed not in rule.choices else []
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise FlagError(f"{variable}: {error}") from None
        if bad:
            choices = ", ".join(map(str, rule.choices or ()))
            raise FlagError(f"{variable}: {bad[0]!r} is not one of {choices}")
        values[spec.name] = parsed
    return values


def parse_config(
    parser: argparse.ArgumentParser,
    cls: type,
    argv: list[str] | None,
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, argparse.Namespace]:
    """Parse ARGV into an instance of CLS (flags win over environment values); also the namespace.

    Fields of CLS are taken from the namespace; anything else PARSER defines stays in the returned
    namespace for the caller.
    """
    namespace = parser.parse_args(argv)
    given = vars(namespace)
    names = {spec.name for spec in dataclasses.fields(cls)}
    values = env_values(cls, env_prefix, environ)
    values.update({name: value for name, value in given.items() if name in names})
    return cls(**values), namespace


def run(
    prog: str,
    parse: Callable[[], Parsed],
    command: Callable[[Parsed], int],
    *,
    error_word: bool = True,
) -> int:
    """Run one CLI command: `parse()` the flags, then `command(parsed)`; return the exit code.

    The one wrapper every `main()` shares: `--help` (argparse's `SystemExit`) returns its code (0),
    and bad input (a `UserError`) from either step prints `<prog>: error: <message>` as one line on stderr and
    returns 2. Anything else is the command's own business (it returns 1, 130... or raises).
    `error_word=False` prints `<prog>: <message>`: `lmfast train`'s lines, which scripts and tests
    already match, were written without the word.
    """
    try:
        parsed = parse()
    except SystemExit as request:  # --help, after argparse printed it
        return int(request.code or 0)
    except UserError as error:
        return report(prog, error, error_word=error_word)
    try:
        return command(parsed)
    except UserError as error:
        return report(prog, error, error_word=error_word)


def report(prog: str, error: BaseException, *, error_word: bool = True) -> int:
    """Print `<prog>: error: <message>` on stderr; 2, the exit code of bad input."""
    print(f"{prog}: {'error: ' if error_word else ''}{error}", file=sys.stderr)
    return 2
