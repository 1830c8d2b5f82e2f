"""`ServeConfig`: everything `lmfast serve` needs, one documented field per flag and env var.

Imports nothing heavy, so `lmfast serve --help` answers without loading torch or FastAPI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
    port: int = 8000
    """TCP port to listen on."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """Inference backend; auto picks onnx for an export dir and torch otherwise."""
    provider: Literal["cpu", "cuda"] = "cpu"
    """Device: ONNX Runtime execution provider or torch device."""
    num_threads: int | None = None
    """Intra-op threads of the model (None: the runtime's default)."""
    spin_us: int | None = None
    """ONNX Runtime: microseconds an idle worker busy-waits for the next operator (None: 20; 0: off, for busy shared machines)."""
    model_name: str | None = None
    """Name reported by /version/ and /v1/models (None: the generator's model name)."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Most sequences decoded together; 1 turns batching off (one request at a time)."""
    step_token_budget: int = DEFAULT_STEP_TOKEN_BUDGET
    """Most prompt tokens prefilled per engine step while other sequences decode (longer prompts go in chunks); smaller keeps streams smoother, larger starts long prompts sooner."""
    stall_ratio: float = DEFAULT_STALL_RATIO
    """Also keep each step's prefill within this many times the running sequences' own decode time (measured as it runs), so a joining prompt slows running streams at most about 1 + this; 0: the token budget alone."""
    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB
    """Memory for the prefix cache (MB of keys and values): a prompt that starts like a cached prompt or conversation prefills only the rest; 0 turns it off."""
    stall_timeout_s: float = 30.0
    """/health_check/ answers 503 "stalled" while one engine step has run longer than this."""
    max_wait_ms: float = 5.0
    """When the model is idle, wait this long for more requests to start a fuller batch."""
    queue_size: int = 256
    """Most requests waiting for a batch slot; more are answered 429 with Retry-After."""
    request_timeout_s: float = 120.0
    """A request still unanswered after this many seconds is dropped and answered 504."""
    api_key: str | None = None
    """If set, every route needs `Authorization: Bearer <api_key>` (401 otherwise) but `/health_check/` and the
    playground page's shell `/` (which asks for the key); /metrics too unless --metrics_public."""
    metrics_public: bool = False
    """With --api_key: let anyone read /metrics (a Prometheus scraper without the key); off by default."""
    chat_template: str | None = None
    """A Jinja chat template file for /v1/chat/completions (None: the model's own, from its tokenizer files)."""
    max_prompt_chars: int = 16_000
    """Longest prompt accepted, in characters (422 beyond it; the model's context is checked too)."""
    max_prompt_tokens: int = 16_384
    """Most prompt tokens one request may carry, all its prompts together, text, token ids and
    messages alike (422 beyond it); each prompt must also leave room in the model's context."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn log level."""
    max_body_bytes: int = 1_000_000
    """Largest request body, in bytes; a bigger one is answered 413 before it is read."""
    body_timeout_s: float = 30.0
    """A request body not received whole within this many seconds is answered 408 (slow or short bodies)."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not complete within this many seconds is closed (slowloris)."""
    cors_allow_origins: str | None = None
    """Comma-separated origins (e.g. http://localhost:3000) whose web pages may call the API; None: no CORS."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in [1, 65535], got {self.port}")
        if self.backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"--backend must be auto, torch or onnx, got {self.backend!r}")
        if self.provider not in ("cpu", "cuda"):
            raise ValueError(f"--provider must be cpu or cuda, got {self.provider!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"--num_threads must be >= 1, got {self.num_threads}")
        if self.spin_us is not None and self.spin_us < 0:
            raise ValueError(f"--spin_us must be >= 0, got {self.spin_us}")
        if self.max_batch_size < 1:
            raise ValueError(f"--max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.step_token_budget < 1:
            raise ValueError(f"--step_token_budget must be >= 1, got {self.step_token_budget}")
        if not self.stall_ratio >= 0:
            raise ValueError(f"--stall_ratio must be >= 0, got {self.stall_ratio}")
        if not self.prefix_cache_mb >= 0:
            raise ValueError(f"--prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")
        if not self.stall_timeout_s > 0:
            raise ValueError(f"--stall_timeout_s must be > 0, got {self.stall_timeout_s}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.queue_size < 1:
            raise ValueError(f"--queue_size must be >= 1, got {self.queue_size}")
        if self.max_body_bytes < 1:
            raise ValueError(f"--max_body_bytes must be >= 1, got {self.max_body_bytes}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"--request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_prompt_chars < 1:
            raise ValueError(f"--max_prompt_chars must be >= 1, got {self.max_prompt_chars}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"--max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
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
