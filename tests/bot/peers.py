"""Real HTTP peers for the bot tests: a Telegram Bot API server and a stand-in lmfast API.

`FakeTelegram` speaks the Bot API over HTTP (the bot reaches it with aiogram's own client through
`--telegram_api_server`): it hands out injected updates through long-polling getUpdates, records
every call, and checks what a real server checks (HTML that parses, 4,096-character limit,
editing only existing messages, answering each callback once). `FakeLmfastApi` implements
`POST /generated_texts/` with switchable failures, for the paths the real server cannot be made
to take on demand (down, busy, slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import html.parser
import itertools
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiogram.utils.backoff import BackoffConfig
from aiohttp import web

from lmfast.bot.app import run
from lmfast.bot.config import BotConfig
from lmfast.bot.formatting import utf16_len

# Telegram retries in tests: the same code paths as the defaults, a tenth of the waiting
FAST_BACKOFF = BackoffConfig(min_delay=0.1, max_delay=1.0, factor=1.5, jitter=0.1)
BOT_USER = {"id": 424242, "is_bot": True, "first_name": "lmfast", "username": "lmfast_test_bot"}
TELEGRAM_LIMIT = 4096
ALLOWED_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "tg-spoiler",
    "span",
}
_BAD_AMPERSAND = re.compile(r"&(?!(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);)")
# form fields aiogram sends JSON-encoded; every other field stays the string it was sent as
_JSON_FIELDS = {
    "reply_markup",
    "allowed_updates",
    "commands",
    "entities",
    "link_preview_options",
    "reply_parameters",
}
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout"}


class BadRequest(Exception):
    """A 400 the way Telegram words it."""


@dataclass
class Call:
    method: str
    params: dict[str, Any]


def parse_telegram_html(text: str) -> str:
    """The plain text Telegram would show for `text` in HTML parse mode; BadRequest where it refuses."""

    class _Parser(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.stack: list[str] = []
            self.plain: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag not in ALLOWED_TAGS:
                raise BadRequest(f'can\'t parse entities: unsupported start tag "{tag}"')
            self.stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            if not self.stack or self.stack.pop() != tag:
                raise BadRequest(f'can\'t parse entities: unmatched end tag "{tag}"')

        def handle_data(self, data: str) -> None:
            self.plain.append(data)

    if _BAD_AMPERSAND.search(text):
        raise BadRequest("can't parse entities: unescaped '&'")
    stripped = _strip_tags(text)
    if "<" in stripped or ">" in stripped:
        raise BadRequest("can't parse entities: unescaped '<' or '>'")
    parser = _Parser()
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise BadRequest(f'can\'t parse entities: unclosed tag "{parser.stack[-1]}"')
    return "".join(parser.plain)


def _strip_tags(text: str) -> str:
    return re.sub(r"</?[a-zA-Z][a-zA-Z-]*>", "", text)


@dataclass
class FakeTelegram:
    """A Telegram Bot API server on a loopback port. Use `async with FakeTelegram() as tg`."""

    calls: list[Call] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (method, description) answered 400
    messages: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # (chat, id) -> message
    fail_next: dict[str, int] = field(default_factory=dict)  # method -> connections to drop
    flood_next: dict[str, int] = field(default_factory=dict)  # method -> 429 "retry after 1" answers
    reject_next: dict[str, int] = field(default_factory=dict)  # method -> 400s not caused by the bot
    token: str | None = None  # if set, any other token is answered 401 Unauthorized
    dropped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Event()
        self._answered: set[str] = set()
        self._pending_queries: set[str] = set()
        self.chat_types: dict[int, str] = {}  # chat id -> type, for chats that are not private
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        # a real server would have refused these: the bot sent something malformed
        assert not self.errors, f"Telegram would answer 400 to: {self.errors}"

    # injecting updates --------------------------------------------------------------------------------
    def send_text(self, user_id: int, text: str, chat_id: int | None = None) -> int:
        """A user writes `text` in their private chat with the bot (chat id = user id by default)."""
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id or user_id, "type": "private", "first_name": f"user{user_id}"},
            "from": {"id": user_id, "is_bot": False, "first_name": f"User<{user_id}>"},
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self._push({"message": message})

    def send_group_text(
        self, user_id: int, group_id: int, text: str, name: str = "", reply_to: dict[str, Any] | None = None
    ) -> int:
        """`name` (user `user_id`) writes `text` in supergroup `group_id`; `@username`s become mention
        entities, and `reply_to` (a message the group has) makes it a reply."""
        self.chat_types[group_id] = "supergroup"
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": group_id, "type": "supergroup", "title": "The group"},
            "from": {"id": user_id, "is_bot": False, "first_name": name or f"user{user_id}"},
            "text": text,
        }
        entities = [
            {"type": "mention", "offset": utf16_len(text[: m.start()]), "length": utf16_len(m.group())}
            for m in re.finditer(r"@\w+", text)
        ]
        if text.startswith("/"):
            entities.insert(0, {"type": "bot_command", "offset": 0, "length": len(text.split()[0])})
        if entities:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self.messages[(group_id, message["message_id"])] = message
        return self._push({"message": message})

    def send_sticker(self, user_id: int) -> int:
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": user_id, "type": "private"},
            "from": {"id": user_id, "is_bot": False, "first_name": "u"},
            "sticker": {
                "file_id": "f",
                "file_unique_id": "u",
                "type": "regular",
                "width": 1,
                "height": 1,
                "is_animated": False,
                "is_video": False,
            },
        }
        return self._push({"message": message})

    def press(self, user_id: int, message: dict[str, Any], data: str) -> str:
        """A user presses an inline button with callback `data` under a message the bot sent."""
        query_id = f"q{next(self._update_ids)}"
        self._pending_queries.add(query_id)
        self._push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": {"id": user_id, "is_bot": False, "first_name": "u"},
                    "chat_instance": "ci",
                    "message": message,
                    "data": data,
                }
            }
        )
        return query_id

    def _push(self, payload: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, **payload})
        self._notify()
        return update_id

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # reading what the bot did ---------------------------------------------------------------------------
    def sent(self, method: str = "sendMessage", chat_id: int | None = None) -> list[dict[str, Any]]:
        return [
            c.params
            for c in self.calls
            if c.method == method and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every call the bot makes); return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            changed = self._changed
            result = predicate()
            if result:
                return result
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; calls so far: {[(c.method, c.params) for c in self.calls]}")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_sent(
        self, count: int, chat_id: int, method: str = "sendMessage", timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """The first `count` messages sent to the chat, once there are that many."""
        sent = await self.wait_for(
            lambda: len(self.sent(method, chat_id)) >= count and self.sent(method, chat_id), timeout
        )
        return sent[:count]

    def message_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """The stored message a recorded sendMessage produced (to press its buttons)."""
        return self.messages[(params["chat_id"], params["_message_id"])]

    # the HTTP side ---------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await _read_params(request)
        if self.token is not None and request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        if self.reject_next.get(method, 0) > 0:
            self.reject_next[method] -= 1
            self.dropped.append(method)
            return _error(400, "Bad Request: injected failure")
        if self.flood_next.get(method, 0) > 0:
            self.flood_next[method] -= 1
            self.dropped.append(method)
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 1",
                    "parameters": {"retry_after": 1},
                },
                status=429,
            )
        if self.fail_next.get(method, 0) > 0:
            self.fail_next[method] -= 1
            self.dropped.append(method)
            self._notify()
            request.transport.close()  # type: ignore[union-attr]  # the client sees a dropped connection
            return web.Response(status=502)
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        try:
            result = await handler(params) if asyncio.iscoroutinefunction(handler) else handler(params)
        except BadRequest as error:
            self.errors.append((method, str(error)))
            self._notify()
            return _error(400, f"Bad Request: {error}")
        if method != "getUpdates":
            self.calls.append(Call(method, params))
            self._notify()
        return web.json_response({"ok": True, "result": result})

    def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return BOT_USER

    def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        return True

    def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        return True

    def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = params.get("offset", 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = asyncio.get_running_loop().time() + min(params.get("timeout", 0), 5)
        while not self._updates:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return []
        return self._updates[: params.get("limit", 100)]

    def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        return True

    def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        text = params.get("text", "")
        plain = self._check_text(text, params)
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": params["chat_id"], "type": self.chat_types.get(params["chat_id"], "private")},
            "from": BOT_USER,
            "text": plain,
        }
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        self.messages[(params["chat_id"], message["message_id"])] = message
        params["_message_id"] = message["message_id"]
        params["_plain"] = plain
        return message

    def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (params.get("chat_id"), params.get("message_id"))
        if key not in self.messages:
            raise BadRequest("message to edit not found")
        message = self.messages[key]
        plain = self._check_text(params.get("text", ""), params)
        if plain == message["text"] and params.get("reply_markup") == message.get("reply_markup"):
            raise BadRequest(
                "message is not modified: specified new message content and reply markup are exactly the same"
            )
        message["text"] = plain
        message.pop("reply_markup", None)
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        params["_plain"] = plain
        return message

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        query_id = params.get("callback_query_id")
        if query_id not in self._pending_queries or query_id in self._answered:
            raise BadRequest("query is too old and response timeout expired or query ID is invalid")
        self._answered.add(query_id)
        return True

    def _check_text(self, text: str, params: dict[str, Any]) -> str:
        plain = parse_telegram_html(text) if params.get("parse_mode") == "HTML" else text
        if not plain.strip():
            raise BadRequest("message text is empty")
        if utf16_len(plain) > TELEGRAM_LIMIT:
            raise BadRequest("message is too long")
        return plain


async def _read_params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        return dict(await request.json())
    params: dict[str, Any] = {}
    for key, value in (await request.post()).items():
        if not isinstance(value, str):
            continue
        if key in _JSON_FIELDS:
            params[key] = json.loads(value)
        elif key in _INT_FIELDS:
            params[key] = int(value)
        else:
            params[key] = value
    return params


def _error(status: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": status, "description": description}, status=status)


def buttons(params: dict[str, Any]) -> dict[str, str]:
    """Button text -> callback data of a recorded sendMessage/editMessageText."""
    rows = (params.get("reply_markup") or {}).get("inline_keyboard", [])
    return {b["text"]: b.get("callback_data", "") for row in rows for b in row}


# ---------------------------------------------------------------------------------------------------------
@dataclass
class FakeLmfastApi:
    """`POST /generated_texts/` answering a continuation that spells out the settings it was given.

    `fail_next` answers that many requests with 503 first; `slow_next` makes that many requests
    take `slow_s` seconds; `reply` (if set) replaces the generated text; a seed text longer than
    `max_seed_chars` is answered 422 as the real server does for a prompt beyond the context;
    `body` (if set) is answered as is, instead of `{"texts": [...]}`.
    """

    api_key: str | None = None
    fail_next: int = 0
    slow_next: int = 0
    slow_s: float = 2.0
    reply: str | None = None
    max_seed_chars: int = 20_000
    body: Any = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    chat: bool = False  # serve /tokenize and /v1/chat/completions, as for a model with a chat template
    max_model_len: int = 1000  # the context /tokenize reports; a token is a word here (plus 2 per message)
    chat_requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeLmfastApi:
        app = web.Application()
        app.router.add_post("/generated_texts/", self._generate)
        if self.chat:
            app.router.add_post("/tokenize", self._tokenize)
            app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _generate(self, request: web.Request) -> web.Response:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"detail": "invalid API key"}, status=401)
        body = await request.json()
        body["_authorization"] = request.headers.get("Authorization")
        self.requests.append(body)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"detail": "model not ready"}, status=503, headers={"Retry-After": "0"})
        if self.slow_next > 0:
            self.slow_next -= 1
            await asyncio.sleep(self.slow_s)  # the server being slow is the behaviour under test
        if len(body["seed_text"]) > self.max_seed_chars:
            return web.json_response(
                {"detail": [{"msg": "seed_text is longer than the model's context"}]}, status=422
            )
        if self.body is not None:
            return web.json_response(self.body)
        text = self.reply
        if text is None:  # spells out the settings it was given, so tests can see them applied
            text = f" [t={body['temperature']:g} n={body['generation_max_len']} p={body['top_p']:g} #{len(self.requests)}]"
        return web.json_response({"texts": [text] * body["num_return_sequences"]})

    def count(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages)

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {"count": self.count(body["messages"]), "max_model_len": self.max_model_len, "tokens": []}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """Streams an answer naming how many messages it was given, in two pieces, OpenAI's way."""
        body = await request.json()
        self.chat_requests.append(body)
        if self.count(body["messages"]) + body["max_tokens"] > self.max_model_len:
            return web.json_response({"detail": "prompt does not fit the context"}, status=422)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = [f"answer #{len(self.chat_requests)}", f" to {len(body['messages'])} messages"]
        for piece in pieces:
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def running_bot(config: BotConfig) -> AsyncIterator[asyncio.Task]:
    """Run `lmfast.bot.app.run(config)` as a task for the block; stop it (and re-raise its errors) after."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(config, stop=stop, handle_signals=False, telegram_backoff=FAST_BACKOFF))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago): an API that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
