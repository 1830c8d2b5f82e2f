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
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlparse

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
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

logger = logging.getLogger(__name__)
T = TypeVar("T")

# getMe at start-up and getUpdates while polling: retried forever, at most this far apart
TELEGRAM_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=30.0, factor=1.5, jitter=0.1)
# updates handled at once; polling waits for a free slot beyond it, so a flood cannot pile up tasks
MAX_CONCURRENT_UPDATES = 64
# on shutdown, replies being generated get this long to finish before the client is closed
SHUTDOWN_GRACE_S = 30.0


def build_bot(config: BotConfig) -> Bot:
    """A Bot speaking HTML, pointed at api.telegram.org or `--telegram_api_server`."""
    api = (
        TelegramAPIServer.from_base(config.telegram_api_server) if config.telegram_api_server else PRODUCTION
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

    Survives Telegram being unreachable (at start-up and while polling) and the lmfast API being
    down; only a bad token or a broken config ends it early.

    Args:
        config: what to run.
        stop: set it to stop gracefully (replies in progress finish first).
        handle_signals: SIGINT and SIGTERM set `stop` (the CLI; not possible off the main thread).
        telegram_backoff: pauses between attempts while Telegram is unreachable.
    """
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not main thread
                loop.add_signal_handler(sig, stop.set)
    db = Storage(config.db_path, max_texts=config.max_stored_texts)
    api = LmfastClient(
        config.api_url,
        api_key=config.api_key,
        timeout_s=config.api_timeout_s,
        retries=config.api_retries,
        backoff_s=config.api_backoff_s,
        deadline_s=config.api_deadline_s,
    )
    bot = build_bot(config)
    in_flight = InFlight()
    dispatcher = build_dispatcher(config, db, api, in_flight)
    try:
        me = await _until_answered(bot.me, stop, telegram_backoff)
        if me is None:
            return
        logger.info("connected to Telegram as @%s (id %d)", me.username, me.id)
        await _publish_commands(bot)
        if config.webhook_url:
            await _serve_webhook(config, bot, dispatcher, stop, telegram_backoff)
        else:
            await _poll(config, bot, dispatcher, stop, telegram_backoff)
        await in_flight.wait(SHUTDOWN_GRACE_S)
    finally:
        await api.aclose()
        await bot.session.close()
        db.close()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    asyncio.get_running_loop().remove_signal_handler(sig)
        logger.info("bot stopped")


async def _until_answered(
    call: Callable[[], Awaitable[T]], stop: asyncio.Event, backoff_config: BackoffConfig
) -> T | None:
    """Make a Telegram call until it succeeds (a bad token raises); None when stopped first.

    aiogram's polling calls getMe once and dies if it fails; retrying the start-up calls here keeps
    a bot that starts while the network is down alive until it comes back.
    """
    backoff = Backoff(backoff_config)
    while not stop.is_set():
        try:
            return await call()
        except TelegramUnauthorizedError:
            raise  # a revoked or mistyped token: waiting will not fix it
        except Exception as error:
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
    config: BotConfig, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event, backoff: BackoffConfig
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
            backoff_config=backoff,
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
    config: BotConfig, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event, backoff: BackoffConfig
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
