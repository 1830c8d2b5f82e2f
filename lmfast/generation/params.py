"""Sampling parameters: one dataclass for the generator, `generation_config.json`, the HTTP schemas
and the bot's per-chat settings, so a default or a bound is written down exactly once.

Imports nothing heavy: the server and the bot use it without torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# hard limits shared by every entry point (HTTP bodies, CLI flags, bot settings)
MAX_NEW_TOKENS_LIMIT = 4096
MAX_RETURN_SEQUENCES = 16


@dataclass
class GenerationParams:
    """How to continue a prompt. Defaults are the seed project's."""

    max_new_tokens: int = 64
    """Tokens to generate after the prompt (the seed's `generation_max_len`)."""
    temperature: float = 0.7
    """Softmax temperature; 0 means greedy decoding (argmax, no division by zero)."""
    top_k: int = 50
    """Keep only the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1 disables."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty (>1 discourages tokens already in the prompt or output); 1 disables."""
    num_return_sequences: int = 1
    """Independent continuations per prompt."""
    stop: list[str] = field(default_factory=list)
    """Generation of a sequence ends when its text contains any of these; the stop text is cut off."""
    banned_words: list[str] = field(default_factory=list)
    """Words never generated (every sub-token of each word is banned; the seed's `ignored_words`)."""
    seed: int | None = None
    """Seed for reproducible sampling; None draws a fresh one."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(
                f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}"
            )
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.repetition_penalty <= 100.0:
            raise ValueError(f"repetition_penalty must be in (0, 100], got {self.repetition_penalty}")
        if not 1 <= self.num_return_sequences <= MAX_RETURN_SEQUENCES:
            raise ValueError(
                f"num_return_sequences must be in [1, {MAX_RETURN_SEQUENCES}], got {self.num_return_sequences}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        self.stop = [s for s in self.stop if s]
        self.banned_words = [w for w in self.banned_words if w.strip()]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: Any) -> GenerationParams:
        """A copy with some fields changed (validated again; unknown names rejected by name)."""
        self._reject_unknown(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationParams:
        """Build from a dict, rejecting unknown keys (a typo must not pass silently)."""
        cls._reject_unknown(values)
        return cls(**values)

    @classmethod
    def _reject_unknown(cls, names: dict[str, Any]) -> None:
        unknown = sorted(set(names) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown generation parameter(s): {', '.join(unknown)}")

    @classmethod
    def from_file(cls, path: str | Path) -> GenerationParams:
        """Load `generation_config.json` as written by `lmfast export`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
