"""Tokenizers by name: the registry behind `--tokenizer_cls_name`.

A tokenizer here is a Hugging Face `tokenizers.Tokenizer` (the reference every fast engine is
checked against) plus its special tokens. `--tokenizer_cls_name` accepts:

- a registered name, e.g. `GPT2Tokenizer` (the real GPT-2 BPE shipped in `lmfast/assets/gpt2`);
- a local Hugging Face tokenizer directory (with `tokenizer.json`, or GPT-2 style `vocab.json` +
  `merges.txt`) or a path to a `tokenizer.json` file;
- `package.module:factory`, a zero-argument callable returning a `Tokenizer` (see below).

How to add a new tokenizer (docs/tokenizers.md; no subclassing)::

    from tokenizers import Tokenizer as HFTokenizer
    from lmfast.data.tokenizers import Tokenizer, register_tokenizer

    @register_tokenizer("MyTokenizer")
    def my_tokenizer() -> Tokenizer:
        backend = HFTokenizer.from_file("path/to/tokenizer.json")
        return Tokenizer(name="MyTokenizer", backend=backend, bos_token="<s>", eos_token="</s>")

then either import that module before calling `prepare()`, or pass
`--tokenizer_cls_name my_package.my_module:my_tokenizer` on the command line.

Semantics (docs/architecture.md §1): BOS/EOS are added *by id* around each document; special-token strings
that occur inside the text are plain text (encoded by the BPE like any other characters).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from lmfast.flags import UserError, one_line

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
GPT2_DIR = ASSETS_DIR / "gpt2"
GPT2_SPECIAL = "<|endoftext|>"

_FILES_TO_SAVE = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class UnknownTokenizerError(UserError):
    """`--tokenizer_cls_name` names neither a registered tokenizer nor a usable path."""


@dataclass
class Tokenizer:
    """A reference tokenizer and its special tokens.

    Attributes:
        name: what `--tokenizer_cls_name` said (registry name or path), stored in description.json.
        backend: the Hugging Face `tokenizers.Tokenizer`, special tokens included as added tokens.
        bos_token: string added by id before each document, or None.
        eos_token: string added by id after each document, or None.
        pad_token: padding token for training; defaults to `eos_token`.
        add_bos_token: the tokenizer's own convention for a BOS before a text (tokenizer_config's
            `add_bos_token`, or what its post-processor adds); None = unknown, then documents
            keep `bos_token` (see `lmfast.data.boundaries`).
        generation_eos_token_ids: the eos ids of a `generation_config.json` beside the tokenizer.
    """

    name: str
    backend: HFTokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)
    add_bos_token: bool | None = None
    generation_eos_token_ids: tuple[int, ...] = ()
    _plain: HFTokenizer | None = field(default=None, init=False, repr=False, compare=False)
    _vocab_size: int | None = field(default=None, init=False, repr=False, compare=False)
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pad_token is None:
            self.pad_token = self.eos_token
        for role in ("bos_token", "eos_token", "pad_token"):
            token = getattr(self, role)
            if token is not None and self.backend.token_to_id(token) is None:
                raise ValueError(f"tokenizer {self.name!r}: {role} {token!r} is not in its vocabulary")

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (one more than the largest id)."""
        if self._vocab_size is None:
            largest = max(self.backend.get_vocab(with_added_tokens=True).values(), default=-1)
            self._vocab_size = max(self.backend.get_vocab_size(with_added_tokens=True), largest + 1)
        return self._vocab_size

    def json_text(self) -> str:
        """The backend as tokenizer.json text, serialized once (MBs for a large vocabulary).

        The engines, the plain-text copy and `save` all read it; the backend must not be modified
        after the first call.
        """
        if self._json is None:
            self._json = self.backend.to_str()
        return self._json

    def plain_text_backend(self) -> HFTokenizer:
        """A copy of the backend that encodes special-token strings as plain text (the reference).

        Built once and cached: the backend must not be modified after the first call.
        """
        if self._plain is None:
            self._plain = HFTokenizer.from_str(self.json_text())
            self._plain.encode_special_tokens = True
        return self._plain

    @contextlib.contextmanager
    def special_tokens_as_text(self) -> Iterator[HFTokenizer]:
        """The plain-text reference without building the copy: the cached copy when there is one,
        else the backend itself with `encode_special_tokens` set until the block ends (the same
        encoder; a copy costs a full deserialization). The block must not run beside other users
        of the backend: the engine check in `prepare` runs before anything else encodes.
        """
        if self._plain is not None:
            yield self._plain
            return
        before = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = True
        try:
            yield self.backend
        finally:
            self.backend.encode_special_tokens = before

    def encode_document(self, text: str, bos: int | None = -1, eos: int | None = -1) -> list[int]:
        """Reference ids of one document: BOS + plain-text ids + EOS (slow; for tests and checks).

        `bos`/`eos` are the boundary ids (None = no token); -1 = the tokenizer's own bos/eos.
        """
        ids = self.plain_text_backend().encode(text, add_special_tokens=False).ids
        bos = self.bos_token_id if bos == -1 else bos
        eos = self.eos_token_id if eos == -1 else eos
        return ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(map(int, ids)), skip_special_tokens=False)

    def save(self, directory: str | Path) -> Path:
        """Write a self-contained copy loadable offline by `PreTrainedTokenizerFast.from_pretrained`.

        Returns:
            The directory, holding tokenizer.json, tokenizer_config.json, special_tokens_map.json.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(self.json_text(), encoding="utf-8")
        special = {
            key: value
            for key, value in (
                ("bos_token", self.bos_token),
                ("eos_token", self.eos_token),
                ("pad_token", self.pad_token),
            )
            if value is not None
        }
        if isinstance(self.extra_config.get("unk_token"), str):
            special["unk_token"] = self.extra_config["unk_token"]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": int(1e30),
            "clean_up_tokenization_spaces": False,
            **self.extra_config,
            **special,
        }
        (directory / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2) + "\n", encoding="utf-8"
        )
        (directory / "special_tokens_map.json").write_text(
            json.dumps(special, indent=2) + "\n", encoding="utf-8"
        )
        return directory


# name -> zero-argument factory; filled by @register_tokenizer at import time only
_REGISTRY: dict[str, Callable[[], Tokenizer]] = {}


def register_tokenizer(name: str) -> Callable[[Callable[[], Tokenizer]], Callable[[], Tokenizer]]:
    """Decorator: make `factory()` available as `--tokenizer_cls_name NAME`."""

    def decorator(factory: Callable[[], Tokenizer]) -> Callable[[], Tokenizer]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"tokenizer name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def registered_tokenizers() -> list[str]:
    """Names accepted by `--tokenizer_cls_name` besides paths and `module:factory`."""
    return sorted(_REGISTRY)


def byte_level_bpe(vocab_file: str | Path, merges_file: str | Path) -> HFTokenizer:
    """GPT-2 style byte-level BPE from vocab.json + merges.txt (no special tokens yet)."""
    backend = HFTokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def _with_special(backend: HFTokenizer, *tokens: str | None) -> HFTokenizer:
    from tokenizers import AddedToken

    present = {t.content for t in backend.get_added_tokens_decoder().values()}
    missing = [t for t in dict.fromkeys(tokens) if t is not None and t not in present]
    if missing:
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return backend


@register_tokenizer("GPT2Tokenizer")
def gpt2_tokenizer() -> Tokenizer:
    """The real GPT-2 BPE (50,257 ids, `<|endoftext|>` = 50256 as BOS, EOS and pad), shipped in the package."""
    backend = _with_special(byte_level_bpe(GPT2_DIR / "vocab.json", GPT2_DIR / "merges.txt"), GPT2_SPECIAL)
    return Tokenizer(
        name="GPT2Tokenizer",
        backend=backend,
        bos_token=GPT2_SPECIAL,
        eos_token=GPT2_SPECIAL,
        pad_token=GPT2_SPECIAL,
        extra_config={"unk_token": GPT2_SPECIAL, "add_prefix_space": False},
    )


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _from_path(path: Path, name: str) -> Tokenizer:
    directory = path if path.is_dir() else path.parent
    json_file = path if path.is_file() else directory / "tokenizer.json"
    if json_file.is_file():
        try:
            backend = HFTokenizer.from_file(str(json_file))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise UnknownTokenizerError(f"{json_file}: not a Hugging Face tokenizer.json ({error})") from None
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        backend = byte_level_bpe(directory / "vocab.json", directory / "merges.txt")
    else:
        raise UnknownTokenizerError(f"{path}: no tokenizer.json (nor vocab.json + merges.txt) there")
    config: dict[str, Any] = {}
    for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / file_name
        if file.is_file():
            try:
                config.update(json.loads(file.read_text(encoding="utf-8")))
            except json.JSONDecodeError as error:
                raise UnknownTokenizerError(f"{file}: invalid JSON ({error})") from None
    bos, eos, pad = (_token_content(config.get(k)) for k in ("bos_token", "eos_token", "pad_token"))
    backend = _with_special(backend, bos, eos, pad)
    add_bos = config.get("add_bos_token")
    return Tokenizer(
        name=name,
        backend=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        add_bos_token=add_bos if isinstance(add_bos, bool) else _post_processor_adds_bos(backend),
        generation_eos_token_ids=_generation_eos_ids(directory / "generation_config.json"),
    )


def _import_from_cwd(module_name: str) -> ModuleType:
    """Import MODULE_NAME with the current directory on `sys.path`, as `python -m` would have it.

    A console script (`lmfast prepare`) starts with its own bin directory on `sys.path`, not the
    current one, so without this `my_package.my_tokenizer` next to the user's data is not found.
    """
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        return importlib.import_module(module_name)
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(cwd)


def _post_processor_adds_bos(backend: HFTokenizer) -> bool:
    """Whether encoding a text with special tokens puts a special token before it (Llama 3 style)."""
    encoding = backend.encode("a", add_special_tokens=True)
    return bool(encoding.special_tokens_mask) and encoding.special_tokens_mask[0] == 1


def _generation_eos_ids(path: Path) -> tuple[int, ...]:
    """The eos id(s) of a generation_config.json, () when absent or unreadable."""
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return ()
    eos = eos if isinstance(eos, list) else [eos]
    return tuple(int(i) for i in eos if isinstance(i, int) and not isinstance(i, bool))


def _from_import_path(spec: str) -> Tokenizer:
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(_import_from_cwd(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UnknownTokenizerError(f"cannot import tokenizer factory {spec!r} ({error})") from None
    except Exception as error:  # the module itself raised while being imported
        raise UnknownTokenizerError(
            f"importing {module_name!r} failed: {type(error).__name__}: {one_line(error)}"
        ) from None
    if not callable(factory):
        raise UnknownTokenizerError(f"{spec!r} is a {type(factory).__name__}, not a callable factory")
    try:
        tokenizer = factory()
    except Exception as error:  # a user's factory: report it in one line, not a traceback
        raise UnknownTokenizerError(
            f"factory {spec!r} failed: {type(error).__name__}: {one_line(error)}"
        ) from None
    if not isinstance(tokenizer, Tokenizer):
        raise UnknownTokenizerError(
            f"{spec!r} returned {type(tokenizer).__name__}, expected lmfast Tokenizer"
        )
    return tokenizer


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """Resolve `--tokenizer_cls_name`: a registered name, a local path, or `module:factory`.

    Raises:
        UnknownTokenizerError: with a message listing the registered names.
    """
    spec = str(name_or_path)
    if spec in _REGISTRY:
        return _REGISTRY[spec]()
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path, spec)
    if ":" in spec and not spec.startswith(("/", ".")):
        return _from_import_path(spec)
    raise UnknownTokenizerError(
        f"unknown tokenizer {spec!r}: expected one of {registered_tokenizers()}, "
        "a local Hugging Face tokenizer directory or tokenizer.json, or module:factory"
    )
