"""Wiring and running: the aiogram Bot and Dispatcher, long polling or a webhook server.

`run(config)` is what `lmfast bot` calls; tests call it too, with a stop event, pointed at a
local Telegram Bot API peer through `config.telegram_api_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlparse

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.base import BaseSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramUnauthorizedError
from aiogram.types import BotCommand
from aiogram.utils.backoff import Backoff, BackoffConfig

from lmfast.bot.client import LmfastClient
from lmfast.bot.config import BotConfig
from lmfast.bot.handlers import COMMANDS, build_router
from lmfast.bot.middlewares import AllowList, InFlight, RetryTelegramCalls, ValidText
from lmfast.bot.ratelimit import RateLimiter
from lmfast.bot.storage import Storage
from lmfast.flags import one_line

logger = logging.getLogger(__name__)
T = TypeVar("T")

# getMe at start-up and getUpdates while polling: retried at most this far apart
TELEGRAM_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=30.0, factor=1.5, jitter=0.1)
# updates handled at once; polling waits for a free slot beyond it, so a flood cannot pile up tasks
MAX_CONCURRENT_UPDATES = 64
# on shutdown, replies being generated get this long to finish before the client is closed
SHUTDOWN_GRACE_S = 30.0


class TelegramUnreachable(RuntimeError):
    """A start-up call failed `--start_attempts` times in a row (no network, or not a Bot API server)."""


def build_bot(config: BotConfig, session: BaseSession | None = None) -> Bot:
    """A Bot speaking HTML, pointed at api.telegram.org or `--telegram_api_server` (or given `session`)."""
    if session is None:
        api = (
            TelegramAPIServer.from_base(config.telegram_api_server)
            if config.telegram_api_server
            else PRODUCTION
        )
        session = AiohttpSession(api=api)
    session.middleware(RetryTelegramCalls())
    return Bot(
        config.token,
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML, link_preview_is_disabled=True),
    )


def build_dispatcher(
    config: BotConfig, db: Storage, api: LmfastClient, in_flight: InFlight | None = None
) -> Dispatcher:
    """The dispatcher with the allow-list, the handlers, and their dependencies as workflow data."""
    dispatcher = Dispatcher(
        db=db,
        api=api,
        limiter=RateLimiter(config.rate_limit, config.rate_window_s),
        group_limiter=RateLimiter(config.group_rate_limit, config.rate_window_s),
        group_trigger=config.group_trigger,
        edit_interval_s=config.stream_edit_interval_s,
    )
    if in_flight is not None:
        dispatcher.update.outer_middleware(in_flight)
    allow_list = AllowList(config.allowed_users, config.allowed_groups)
    dispatcher.message.outer_middleware(allow_list)
    dispatcher.message.outer_middleware(ValidText())
    dispatcher.callback_query.outer_middleware(allow_list)
    dispatcher.include_router(build_router())
    return dispatcher


async def run(
    config: BotConfig,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    telegram_backoff: BackoffConfig = TELEGRAM_BACKOFF,
) -> None:
    """Run the bot until `stop` is set (or SIGINT/SIGTERM when `handle_signals`).

    Survives Telegram being unreachable while polling and the lmfast API being down; a bad token,
    a broken config or `config.start_attempts` failed start-up calls in a row end it early (a fake
    token or no network: one line, not retries for ever).

    Args:
        config: what to run.
        stop: set it to stop gracefully (replies in progress finish first).
        handle_signals: SIGINT and SIGTERM set `stop` (the CLI; not possible off the main thread); a
            second one cancels at once.
        telegram_backoff: pauses between attempts while Telegram is unreachable.

    Raises:
        TelegramUnauthorizedError: the token was rejected.
        TelegramUnreachable: a start-up call (getMe, deleteWebhook/setWebhook) failed
            `config.start_attempts` times.
    """
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and main_task is not None:
                main_task.cancel()  # the second Ctrl-C: do not wait for replies in progress
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not main thread
                loop.add_signal_handler(sig, on_signal)
    backoff = _Attempts(telegram_backoff, config.start_attempts)
    try:
        async with open_bot(config) as (bot, dispatcher, in_flight):
            me = await _until_answered(bot.me, stop, backoff)
            if me is None:
                return
            logger.info("connected to Telegram as @%s (id %d)", me.username, me.id)
            await _publish_commands(bot)
            if config.webhook_url:
                await _serve_webhook(config, bot, dispatcher, stop, backoff)
            else:
                await _poll(config, bot, dispatcher, stop, backoff)
            await in_flight.wait(SHUTDOWN_GRACE_S)
    finally:
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    asyncio.get_running_loop().remove_signal_handler(sig)
        logger.info("bot stopped")


@contextlib.asynccontextmanager
async def open_bot(
    config: BotConfig, session: BaseSession | None = None
) -> AsyncIterator[tuple[Bot, Dispatcher, InFlight]]:
    """The bot's parts (storage, lmfast API client, Bot, dispatcher with the handlers), closed on exit.

    `run` feeds the dispatcher from Telegram; `lmfast bot --console` feeds it typed lines.
    """
    db = Storage(config.db_path, max_texts=config.max_stored_texts)
    api = LmfastClient(
        config.api_url,
        api_key=config.api_key,
        timeout_s=config.api_timeout_s,
        retries=config.api_retries,
        backoff_s=config.api_backoff_s,
        deadline_s=config.api_deadline_s,
    )
    bot = build_bot(config, session)
    in_flight = InFlight()
    try:
        yield bot, build_dispatcher(config, db, api, in_flight), in_flight
    finally:
        await api.aclose()
        await bot.session.close()
        db.close()


class _Attempts:
    """The start-up retry budget: pauses from `config`, at most `limit` failed calls in a row."""

    def __init__(self, config: BackoffConfig, limit: int) -> None:
        self.config, self.limit = config, limit


async def _until_answered(
    call: Callable[[], Awaitable[T]], stop: asyncio.Event, attempts: _Attempts
) -> T | None:
    """Make a start-up Telegram call until it succeeds; None when stopped first (even mid-call).

    aiogram's polling calls getMe once and dies if it fails; retrying the start-up calls here keeps
    a bot that starts during a network blip alive, for `attempts.limit` tries.

    Raises:
        TelegramUnauthorizedError: a revoked or mistyped token (waiting will not fix it).
        TelegramUnreachable: `attempts.limit` failures in a row.
    """
    backoff = Backoff(attempts.config)
    started = asyncio.get_running_loop().time()
    for attempt in range(1, attempts.limit + 1):
        if stop.is_set():
            return None
        calling = asyncio.ensure_future(call())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({calling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not calling.done():  # stopped while the call hangs (no network): do not wait for its timeout
            calling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await calling
            return None
        try:
            return calling.result()
        except TelegramUnauthorizedError:
            raise
        except Exception as error:
            if attempt == attempts.limit:
                waited = asyncio.get_running_loop().time() - started
                raise TelegramUnreachable(
                    f"no answer after {attempt} attempts in {waited:.0f} s (last: {one_line(error, 200)})"
                ) from None
            logger.warning("Telegram not reachable (%s); retrying in %.1f s", error, backoff.next_delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), next(backoff))
    return None


async def _publish_commands(bot: Bot) -> None:
    """Fill Telegram's command menu; a nicety, so a failure is logged and the bot goes on."""
    commands = [BotCommand(command=name, description=text) for name, text in COMMANDS.items()]
    try:
        await bot.set_my_commands(commands)
    except Exception as error:
        logger.warning("could not publish the command menu: %s", error)


async def _poll(
    config: BotConfig, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event, backoff: _Attempts
) -> None:
    # getUpdates fails with 409 Conflict while a webhook is set (say, by an earlier webhook run)
    if await _until_answered(lambda: bot.delete_webhook(drop_pending_updates=False), stop, backoff) is None:
        return
    started = asyncio.Event()
    dispatcher.startup.register(started.set)
    polling = asyncio.create_task(
        dispatcher.start_polling(
            bot,
            polling_timeout=config.polling_timeout,
            backoff_config=backoff.config,
            handle_signals=False,  # ours set `stop`, which also ends a webhook run
            close_bot_session=False,
            tasks_concurrency_limit=MAX_CONCURRENT_UPDATES,
        )
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not polling.done():
        # stop_polling refuses before the dispatcher has started: wait for that (or for a crash)
        starting = asyncio.create_task(started.wait())
        await asyncio.wait({polling, starting}, return_when=asyncio.FIRST_COMPLETED)
        starting.cancel()
        if not polling.done():
            await dispatcher.stop_polling()
    await polling  # re-raises what ended polling early, if anything did


async def _serve_webhook(
    config: BotConfig, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event, backoff: _Attempts
) -> None:
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
    from aiohttp import web

    secret = config.webhook_secret or secrets.token_urlsafe(32)
    path = urlparse(config.webhook_url).path or "/"
    app = web.Application()
    SimpleRequestHandler(dispatcher=dispatcher, bot=bot, secret_token=secret).register(app, path=path)
    setup_application(app, dispatcher, bot=bot)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.webhook_host, config.webhook_port).start()
        webhook_set = await _until_answered(
            lambda: bot.set_webhook(
                config.webhook_url,
                secret_token=secret,
                allowed_updates=dispatcher.resolve_used_update_types(),
            ),
            stop,
            backoff,
        )
        if webhook_set is None:
            return
        logger.info("webhook server on %s, path %s", config.webhook_listen, path)
        await stop.wait()
    finally:
        await runner.cleanup()
