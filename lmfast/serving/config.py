"""`ServeConfig`: everything `lmfast serve` needs, one documented field per flag and env var.

Imports nothing heavy, so `lmfast serve --help` answers without loading torch or FastAPI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lmfast.field_rules import bounds, check_fields
from lmfast.flags import ENV_PREFIX, env_values
from lmfast.generation.params import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_PREFIX_CACHE_MB,
    DEFAULT_STALL_RATIO,
    DEFAULT_STEP_TOKEN_BUDGET,
)


@dataclass
class ServeConfig:
    """How to serve a model. Each field is a `--flag` of `lmfast serve` and an `LMFAST_<FIELD>` variable."""

    model: str = ""
    """An export dir (ONNX Runtime), an experiment dir (uses <exp>/hf) or a Hugging Face model dir (torch)."""
    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 exposes the server to the network."""
    port: int = field(default=8000, metadata=bounds(ge=1, le=65535))
    """TCP port to listen on."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """Inference backend; auto picks onnx for an export dir and torch otherwise."""
    provider: Literal["cpu", "cuda"] = "cpu"
    """Device: ONNX Runtime execution provider or torch device."""
    num_threads: int | None = field(default=None, metadata=bounds(ge=1))
    """Intra-op threads of the model (None: the runtime's default)."""
    spin_us: int | None = field(default=None, metadata=bounds(ge=0))
    """ONNX Runtime: microseconds an idle worker busy-waits for the next operator (None: 20; 0: off, for busy shared machines)."""
    model_name: str | None = None
    """Name reported by /version/ and /v1/models (None: the generator's model name)."""
    max_batch_size: int = field(default=DEFAULT_MAX_BATCH_SIZE, metadata=bounds(ge=1))
    """Most sequences decoded together; 1 turns batching off (one request at a time)."""
    step_token_budget: int = field(default=DEFAULT_STEP_TOKEN_BUDGET, metadata=bounds(ge=1))
    """Most prompt tokens prefilled per engine step while other sequences decode (longer prompts go in chunks); smaller keeps streams smoother, larger starts long prompts sooner."""
    stall_ratio: float = field(default=DEFAULT_STALL_RATIO, metadata=bounds(ge=0))
    """Also keep each step's prefill within this many times the running sequences' own decode time (measured as it runs), so a joining prompt slows running streams at most about 1 + this; 0: the token budget alone."""
    prefix_cache_mb: float = field(default=DEFAULT_PREFIX_CACHE_MB, metadata=bounds(ge=0))
    """Memory for the prefix cache (MB of keys and values): a prompt that starts like a cached prompt or conversation prefills only the rest; 0 turns it off."""
    stall_timeout_s: float = field(default=30.0, metadata=bounds(gt=0))
    """/health_check/ answers 503 "stalled" while one engine step has run longer than this."""
    max_wait_ms: float = field(default=5.0, metadata=bounds(ge=0))
    """When the model is idle, wait this long for more requests to start a fuller batch."""
    queue_size: int = field(default=256, metadata=bounds(ge=1))
    """Most requests waiting for a batch slot; more are answered 429 with Retry-After."""
    request_timeout_s: float = field(default=120.0, metadata=bounds(gt=0))
    """A request still unanswered after this many seconds is dropped and answered 504."""
    api_key: str | None = None
    """If set, every route needs `Authorization: Bearer <api_key>` (401 otherwise) but `/health_check/` and the
    playground page's shell `/` (which asks for the key); /metrics too unless --metrics_public."""
    metrics_public: bool = False
    """With --api_key: let anyone read /metrics (a Prometheus scraper without the key); off by default."""
    chat_template: str | None = None
    """A Jinja chat template file for /v1/chat/completions (None: the model's own, from its tokenizer files)."""
    max_prompt_chars: int = field(default=16_000, metadata=bounds(ge=1))
    """Longest prompt accepted, in characters (422 beyond it; the model's context is checked too)."""
    max_prompt_tokens: int = field(default=16_384, metadata=bounds(ge=1))
    """Most prompt tokens one request may carry, all its prompts together, text, token ids and
    messages alike (422 beyond it); each prompt must also leave room in the model's context."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn log level."""
    max_body_bytes: int = field(default=1_000_000, metadata=bounds(ge=1))
    """Largest request body, in bytes; a bigger one is answered 413 before it is read."""
    body_timeout_s: float = field(default=30.0, metadata=bounds(gt=0))
    """A request body not received whole within this many seconds is answered 408 (slow or short bodies)."""
    header_timeout_s: float = field(default=10.0, metadata=bounds(gt=0))
    """A connection whose request headers are not complete within this many seconds is closed (slowloris)."""
    cors_allow_origins: str | None = None
    """Comma-separated origins (e.g. http://localhost:3000) whose web pages may call the API; None: no CORS."""

    def __post_init__(self) -> None:
        """Bounds and choices are the fields' metadata and types (`check_fields`)."""
        check_fields(self)
        if self.api_key == "":
            self.api_key = None
        if self.chat_template == "":
            self.chat_template = None

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values, with the API key masked (it ends up in logs)."""
        values = dataclasses.asdict(self)
        if values["api_key"]:
            values["api_key"] = "***"
        return values

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeConfig:
        """Build from `LMFAST_<FIELD>` variables, then explicit overrides (flags win over env).

        Raises:
            ValueError: a malformed variable (named) or a value that breaks a field's rule.
        """
        values = env_values(cls, ENV_PREFIX, environ)
        values.update(overrides)
        return cls(**values)


def allowed_origins(config: ServeConfig) -> list[str]:
    """`--cors_allow_origins` as a list; empty when CORS is off (the default)."""
    return [origin.strip() for origin in (config.cors_allow_origins or "").split(",") if origin.strip()]
