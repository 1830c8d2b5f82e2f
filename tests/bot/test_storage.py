"""SQLite storage: settings and texts survive reopening; texts stay bounded; chats stay apart."""

from __future__ import annotations

import sqlite3

import pytest

from lmfast.bot.settings import ChatSettings
from lmfast.bot.storage import Storage


def test_settings_default_then_persist_across_reopen(tmp_path):
    path = tmp_path / "sub" / "bot.sqlite3"
    with Storage(path) as db:
        assert db.get_settings(1) == ChatSettings()
        db.set_settings(1, ChatSettings(temperature=0.0, max_new_tokens=16, top_p=0.5))
        db.set_settings(1, ChatSettings(temperature=1.3, max_new_tokens=128, top_p=0.9))
        text_id = db.add_text(1, "prompt", "continuation")
    with Storage(path) as db:
        assert db.get_settings(1) == ChatSettings(temperature=1.3, max_new_tokens=128, top_p=0.9)
        assert db.get_settings(2) == ChatSettings()
        stored = db.get_text(text_id, 1)
        assert (stored.prompt, stored.continuation) == ("prompt", "continuation")


def test_texts_are_bounded_oldest_first(tmp_path):
    with Storage(tmp_path / "bot.sqlite3", max_texts=3) as db:
        ids = [db.add_text(1, f"p{i}", "c") for i in range(5)]
        assert db.count_texts() == 3
        assert db.get_text(ids[0], 1) is None and db.get_text(ids[1], 1) is None
        assert [db.get_text(i, 1).prompt for i in ids[2:]] == ["p2", "p3", "p4"]


def test_a_chat_cannot_read_another_chats_text(tmp_path):
    with Storage(tmp_path / "bot.sqlite3") as db:
        text_id = db.add_text(1, "secret", "c")
        assert db.get_text(text_id, 2) is None


def test_reset_forgets_one_chat_only(tmp_path):
    with Storage(tmp_path / "bot.sqlite3") as db:
        db.set_settings(1, ChatSettings(temperature=0.0))
        db.set_settings(2, ChatSettings(temperature=0.0))
        mine, theirs = db.add_text(1, "a", "b"), db.add_text(2, "a", "b")
        db.reset_chat(1)
        assert db.get_settings(1) == ChatSettings() and db.get_text(mine, 1) is None
        assert db.get_settings(2).temperature == 0.0 and db.get_text(theirs, 2) is not None


def test_settings_stored_out_of_bounds_fall_back_to_defaults(tmp_path):
    path = tmp_path / "bot.sqlite3"
    Storage(path).close()
    with sqlite3.connect(path) as raw:  # as if an older version had looser bounds
        raw.execute("INSERT INTO chat_settings VALUES (1, 0.7, 100000, 1.0, 0)")
    with Storage(path) as db:
        assert db.get_settings(1) == ChatSettings()


def test_max_texts_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_texts"):
        Storage(tmp_path / "x.sqlite3", max_texts=0)


def test_conversation_turns_mode_and_system_prompt_survive_reopening(tmp_path, monkeypatch):
    import lmfast.bot.storage as storage

    monkeypatch.setattr(storage, "MAX_TURNS_PER_CHAT", 4)
    path = tmp_path / "bot.sqlite3"
    with Storage(path) as db:
        ids = [db.add_turn(1, role, f"{role} {i}") for i, role in enumerate(["user", "assistant"] * 3)]
        db.add_turn(2, "user", "other chat")
        db.set_mode(1, "chat")
        db.set_system_prompt(1, "Be brief.")
        with pytest.raises(ValueError, match="mode must be one of"):
            db.set_mode(1, "poetry")
    with Storage(path) as db:
        assert [t.id for t in db.turns(1)] == ids[2:], "the oldest turns beyond the bound are pruned"
        assert db.turns(1)[0].message() == {"role": "user", "content": "user 2"}
        assert (db.get_mode(1), db.get_system_prompt(1)) == ("chat", "Be brief.")
        assert (db.get_mode(3), db.get_system_prompt(3)) == ("auto", None)
        db.delete_turn(1, ids[-1])
        assert db.turns(1)[-1].id == ids[-2]
        db.reset_chat(1)
        assert db.turns(1) == [] and db.get_mode(1) == "auto" and db.get_system_prompt(1) is None
        assert [t.content for t in db.turns(2)] == ["other chat"]
