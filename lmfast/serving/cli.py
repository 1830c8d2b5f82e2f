"""`lmfast serve MODEL [flags]`: serve a model over HTTP with continuous batching.

Every flag is a `ServeConfig` field and may also come from `LMFAST_<FIELD>` (flags win):

    lmfast serve data/exports/nietzsche --host 127.0.0.1 --port 8000 --max_batch_size 32
    LMFAST_API_KEY=secret lmfast serve data/experiments/nietzsche
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from lmfast.flags import OneLineParser, UserError, add_config_flags, run
from lmfast.models.source import ModelSource
from lmfast.serving.config import ENV_PREFIX, ServeConfig


def build_parser() -> OneLineParser:
    """One flag per `ServeConfig` field (lmfast.flags), MODEL as the positional argument."""
    parser = OneLineParser(
        prog="lmfast serve",
        description="Serve a model over HTTP with continuous batching (FastAPI + uvicorn). "
        f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}PORT.",
    )
    add_config_flags(parser, ServeConfig, positional=["model"], env_prefix=ENV_PREFIX)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the model, serve until interrupted."""
    return run("lmfast serve", lambda: build_parser().parse_args(argv), _serve_parsed)


def _serve_parsed(args: argparse.Namespace) -> int:
    """The config from flags and environment, then serve. These lines name MODEL or the flag
    without the word `error:` (scripts and tests match them): the config step is its own `run`."""
    return run("lmfast serve", lambda: ServeConfig.from_env(**vars(args)), _serve_config, error_word=False)


def _serve_config(config: ServeConfig) -> int:
    """Check the model and its chat template before loading anything, then serve."""
    if not config.model:
        raise UserError(f"MODEL: give a model directory (argument or {ENV_PREFIX}MODEL)")
    from lmfast.generation.model_files import LOADABLE
    from lmfast.models.source import resolve_source

    try:
        source = resolve_source(config.model, LOADABLE)  # the one resolution of this server's model
    except FileNotFoundError:
        raise UserError("MODEL", f"{config.model} is not a directory or a .gguf file") from None
    except ValueError as exc:
        raise UserError("MODEL", str(exc)) from None
    if config.chat_template is not None:
        from lmfast.serving.routes.chat import load_chat_template

        try:
            load_chat_template(config, source.path)
        except ValueError as exc:
            raise UserError("--chat_template", str(exc)) from None
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serve(config, source=source)


def serve(config: ServeConfig, generator: Any | None = None, source: ModelSource | None = None) -> int:
    """Load `config.model` and run uvicorn until SIGINT/SIGTERM (then finish running requests).

    Returns:
        0 after a normal shutdown; 1 if the engine thread died (the process then stops itself,
        so a supervisor restarts it instead of a server answering 503 for ever).

    Raises:
        UserError: the model does not load ("MODEL: ..."; `lmfast serve` prints it, exit 2).
    """
    import uvicorn

    from lmfast.serving.app import create_app, load_generator
    from lmfast.serving.protocol import server_options

    if generator is None:
        try:
            generator = load_generator(config, source)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError("MODEL", str(exc)) from None
    crashed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_crash(exc: BaseException) -> None:  # on the engine thread: uvicorn drains and returns
        crashed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(config, generator=generator, on_engine_crash=stop_on_crash, source=source)
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        **server_options(config),
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT after its graceful shutdown
        pass
    if crashed:
        print(f"lmfast serve: the engine thread died ({type(crashed[0]).__name__}); exiting", file=sys.stderr)
        return 1
    return 0
