"""The cache of rewritten graphs stays bounded: entries of deleted exports go, then the least
recently used ones beyond LMFAST_NATIVE_OPS_CACHE_MB; the entry in use always stays."""

from __future__ import annotations

import os

import pytest

from lmfast.generation import native_ops


def _entry(tmp_path, name: str, *, source_exists: bool = True, used: float = 0.0):
    """A manifest-only entry (an export with nothing to swap) for a source file under tmp_path."""
    source = tmp_path / "exports" / f"{name}.onnx"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(b"x")
    entry = native_ops.cache_root() / f"{name}-0000"
    native_ops._write_entry(None, 0, entry, source)
    if not source_exists:
        source.unlink()
    if used:
        os.utime(entry / native_ops._MANIFEST, (used, used))
    return entry


def test_entries_of_deleted_exports_are_dropped_at_the_next_write(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    gone = _entry(tmp_path, "gone")
    (tmp_path / "exports" / "gone.onnx").unlink()
    kept = _entry(tmp_path, "kept")
    assert not gone.exists() and kept.is_dir()


def test_least_recently_used_entries_go_beyond_the_cap(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    old, recent = _entry(tmp_path, "old", used=1_000.0), _entry(tmp_path, "recent", used=2_000.0)
    one_entry = sum(p.stat().st_size for p in old.iterdir())
    # room for two entries: writing a third drops the least recently used, never the new one
    monkeypatch.setenv("LMFAST_NATIVE_OPS_CACHE_MB", str(2.5 * one_entry / 2**20))
    newest = _entry(tmp_path, "newest")
    assert not old.exists() and recent.is_dir() and newest.is_dir()
    monkeypatch.setenv("LMFAST_NATIVE_OPS_CACHE_MB", "0")  # 0 keeps only the entry just written
    last = _entry(tmp_path, "last")
    assert sorted(p.name for p in native_ops.cache_root().iterdir()) == [last.name]


def test_opening_an_entry_marks_it_used(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    entry = _entry(tmp_path, "model", used=1_000.0)
    native_ops._mark_used(entry)
    assert (entry / native_ops._MANIFEST).stat().st_mtime > 1_000.0


@pytest.mark.parametrize("text", ["lots", "-1", "nan"])
def test_a_bad_cap_names_the_variable(monkeypatch, text):
    monkeypatch.setenv("LMFAST_NATIVE_OPS_CACHE_MB", text)
    with pytest.raises(ValueError, match="^LMFAST_NATIVE_OPS_CACHE_MB: "):
        native_ops.cache_limit_bytes()
