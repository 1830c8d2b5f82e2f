"""Middlewares: the allow-list and the text check in front of every handler, and retries around
Telegram calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates, Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import CallbackQuery, Message, TelegramObject

from lmfast.unicode import check_text

logger = logging.getLogger(__name__)

REFUSAL = (
    "Sorry, this bot is private and only answers the users it was set up for.\n"
    "If you should have access, ask its owner to add your user id: <code>{user_id}</code>"
)


class AllowList(BaseMiddleware):
    """Lets through only messages and button presses from the listed user ids (all when empty).

    In a group the refusal is silent (the group would see one for every member's message), and
    only the listed groups (all when empty) are served at all.
    """

    def __init__(
        self, user_ids: tuple[int, ...] | frozenset[int], group_ids: tuple[int, ...] | frozenset[int] = ()
    ) -> None:
        self.user_ids = frozenset(user_ids)
        self.group_ids = frozenset(group_ids)

    def allows(self, user_id: int | None) -> bool:
        return not self.user_ids or (user_id is not None and user_id in self.user_ids)

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user = getattr(event, "from_user", None)
        user_id = user.id if user is not None else None
        message = event.message if isinstance(event, CallbackQuery) else event
        chat = getattr(message, "chat", None)
        if chat is not None and chat.type in ("group", "supergroup"):
            if (not self.group_ids or chat.id in self.group_ids) and self.allows(user_id):
                return await handler(event, data)
            logger.info("ignored user %s in group %s (--allowed_users, --allowed_groups)", user_id, chat.id)
            if isinstance(event, CallbackQuery):
                await event.answer("Sorry, this bot is private.", show_alert=True)
            return None
        if self.allows(user_id):
            return await handler(event, data)
        logger.info("refused user %s (not in --allowed_users)", user_id)
        refusal = REFUSAL.format(user_id=user_id if user_id is not None else "unknown")
        if isinstance(event, Message):
            await event.answer(refusal)
        elif isinstance(event, CallbackQuery):
            await event.answer("Sorry, this bot is private.", show_alert=True)
        return None


BROKEN_TEXT = (
    "Sorry, I cannot read this message: it holds a broken character (a lone UTF-16 surrogate). "
    "Please send it again, perhaps without that emoji or symbol."
)


class ValidText(BaseMiddleware):
    """Answers a message whose text is not valid Unicode (a lone UTF-16 surrogate, which JSON can
    spell and no encoder takes) with one clear line, before any handler stores or sends it."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if isinstance(event, Message):
            try:
                check_text([event.text, event.caption])
            except ValueError:
                logger.info("refused a message with invalid text in chat %s", event.chat.id)
                await event.answer(BROKEN_TEXT)
                return None
        return await handler(event, data)


class InFlight(BaseMiddleware):
    """Tracks the updates being handled, so shutdown can let them finish instead of cutting replies off."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()  # bounded by the dispatcher's concurrency limit

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        task = asyncio.current_task()
        if task is None:
            return await handler(event, data)
        self.tasks.add(task)
        try:
            return await handler(event, data)
        finally:
            self.tasks.discard(task)

    async def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the updates in flight to be handled."""
        current = asyncio.current_task()
        pending = {t for t in self.tasks if t is not current}
        if pending:
            logger.info("waiting up to %.0f s for %d update(s) in flight", timeout_s, len(pending))
            await asyncio.wait(pending, timeout=timeout_s)


class RetryTelegramCalls(BaseRequestMiddleware):
    """Retries a Telegram call after flood control (429), a 5xx or a network error.

    The dispatcher already retries getUpdates forever with its own backoff, so that one passes
    straight through; replies get a few bounded attempts, so a blip does not lose an answer.
    Trade-off: a send whose response was lost after Telegram had delivered it appears twice;
    a rare duplicate beats a reply silently missing.
    """

    def __init__(self, attempts: int = 3, backoff_s: float = 0.5, max_retry_after_s: float = 30.0) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Any,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if isinstance(method, GetUpdates):
            return await make_request(bot, method)
        for attempt in range(1, self.attempts + 1):
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                if attempt == self.attempts or error.retry_after > self.max_retry_after_s:
                    raise
                delay = float(error.retry_after)
            except (TelegramNetworkError, TelegramServerError):
                if attempt == self.attempts:
                    raise
                delay = self.backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "Telegram %s failed (attempt %d); retrying in %.1f s", method.__api_method__, attempt, delay
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises
