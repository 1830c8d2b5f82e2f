"""`lmfast bot --console` and the bot's start-up limits, as a user runs them: real subprocesses,
typed stdin, a stand-in lmfast API on loopback, a Bot API address where nothing answers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.bot.peers import FakeLmfastApi, closed_port_url

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # each starts `lmfast bot` (~10 s of imports)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **{k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"},
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
}


async def _lmfast_bot(*args: str, stdin: bytes | None = None, timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lmfast", "bot", *args, env=ENV, cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    return process.returncode, out.decode(), err.decode()


async def test_the_console_bot_answers_typed_lines_with_the_same_handlers_and_storage(tmp_path):
    db = tmp_path / "console.sqlite3"
    async with FakeLmfastApi() as api:
        typed = "/help\nHello <world>\n[2]\n/settings temperature 1.3\nAgain\n[1]\n"
        code, out, err = await _lmfast_bot(
            "--console", "--api_url", api.url, "--db_path", str(db), stdin=typed.encode()
        )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("lmfast bot --console: you are user 1")
    assert any(line.startswith("/settings") for line in lines)  # /help's command list
    assert "bot> Hello <world> [t=0.7 n=64 p=1 #1]" in lines  # HTML shown as Telegram shows it
    assert "     [1] 🔁 Repeat  [2] ➡️ Continue" in lines
    assert "...   [t=0.7 n=64 p=1 #2]" in lines  # Continue extends the answer in place
    assert "Temperature: 1.3" in lines  # the settings reply
    assert "bot> Again [t=1.3 n=64 p=1 #3]" in lines  # the stored setting applies
    assert lines[-2:] == ["bot> Again [t=1.3 n=64 p=1 #4]", "     [1] 🔁 Repeat  [2] ➡️ Continue"]  # Repeat
    assert [r["seed_text"] for r in api.requests][0] == "Hello <world>"
    assert db.is_file() and err == ""  # no token needed, no log chatter in the chat


async def test_no_telegram_gives_up_with_one_line_after_bounded_attempts(tmp_path):
    code, out, err = await _lmfast_bot(
        "--token", "123:fake", "--telegram_api_server", closed_port_url(), "--db_path", str(tmp_path / "b.db"),
        "--log_level", "error", "--start_attempts", "3",
    )  # fmt: skip
    assert code == 1, err
    (line,) = err.splitlines()
    assert (
        line.startswith("lmfast bot: error: http://127.0.0.1:")
        and "not reachable: no answer after 3 attempts" in line
    )
    assert "lmfast bot --console" in line


async def test_ctrl_c_stops_the_bot_while_it_waits_for_telegram(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lmfast", "bot", "--token", "123:fake", "--telegram_api_server", closed_port_url(),
        "--db_path", str(tmp_path / "b.db"), env=ENV, cwd=REPO_ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    while b"Telegram not reachable" not in await asyncio.wait_for(process.stderr.readline(), 60):
        pass  # retrying the start-up: the state a Ctrl-C used to be swallowed in
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.wait(), 15)
    assert process.returncode == 0
