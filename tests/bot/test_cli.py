"""`lmfast bot` flags and environment: clear exit-2 errors, secrets masked, no torch."""

from __future__ import annotations

import pytest

from lmfast.bot.cli import main, parse_config
from lmfast.bot.config import BotConfig, parse_user_ids
from tests.bot.conftest import TOKEN


def test_flags_win_over_environment():
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "LMFAST_API_URL": "http://env:1",
        "LMFAST_API_KEY": "env-key",
        "TELEGRAM_API_SERVER": "http://tg.local:8081",
        "LMFAST_BOT_ALLOWED_USERS": "1, 2",
    }
    config = parse_config(["--api_url", "http://flag:2", "--rate_limit", "3"], environ=env)
    assert config.token == TOKEN and config.api_url == "http://flag:2" and config.api_key == "env-key"
    assert config.telegram_api_server == "http://tg.local:8081"
    assert config.allowed_users == (1, 2) and config.rate_limit == 3
    assert config.to_dict()["token"] == "***" and config.to_dict()["api_key"] == "***"
    assert parse_config(["--allowed_users", "7"], environ=env).allowed_users == (7,)


def test_defaults_need_only_a_token():
    config = parse_config(["--token", TOKEN], environ={})
    assert config == BotConfig(token=TOKEN)
    assert config.telegram_api_server is None and config.allowed_users == () and config.webhook_url is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--token: missing; pass --token or set TELEGRAM_BOT_TOKEN"),
        (["--token", "nonsense"], {}, "--token: not a Telegram bot token"),
        (["--allowed_users", "12,bob"], {"TELEGRAM_BOT_TOKEN": TOKEN}, "--allowed_users: 'bob'"),
        (
            ["--api_url", "localhost:8000"],
            {"TELEGRAM_BOT_TOKEN": TOKEN},
            "--api_url: expected an http(s) URL",
        ),
        (["--webhook_listen", "8080"], {"TELEGRAM_BOT_TOKEN": TOKEN}, "--webhook_listen: expected host:port"),
        (["--log_level", "loud"], {"TELEGRAM_BOT_TOKEN": TOKEN}, "--log_level must be"),
        (["--api_retries", "-1"], {"TELEGRAM_BOT_TOKEN": TOKEN}, "--api_retries must be >= 0"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_flag(argv, env, message, monkeypatch, capsys):
    for name in ("TELEGRAM_BOT_TOKEN", "LMFAST_API_URL", "LMFAST_BOT_ALLOWED_USERS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_unknown_flag_and_help_go_through_argparse(capsys):
    assert main(["--nope"]) == 2
    assert "lmfast bot: error: unknown flag --nope (see lmfast bot --help)" in capsys.readouterr().err
    assert main(["--tokn", "x"]) == 2
    assert "unknown flag --tokn (did you mean --token?)" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--telegram_api_server" in out and "TELEGRAM_BOT_TOKEN" in out and "--webhook_url" in out


def test_user_ids_parse():
    assert parse_user_ids("1,2 3,,") == (1, 2, 3)
    assert parse_user_ids("") == ()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "directory"])
def test_an_unusable_db_path_is_one_line_and_exit_2(damage, tmp_path, monkeypatch, capsys):
    """Checked when the bot opens its database, before Telegram is called (no token check is made)."""
    from lmfast.bot.storage import Storage

    path = tmp_path / "bot.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"not a database at all, " * 100)
    elif damage == "truncated":
        with Storage(path) as db:
            for i in range(100):
                db.add_turn(1, "user", f"turn {i} " * 50)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.mkdir()
    monkeypatch.delenv("LMFAST_BOT_TOKEN", raising=False)
    assert main(["--token", TOKEN, "--db_path", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lmfast bot: error: --db_path: {path}"), err
