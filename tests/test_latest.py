"""`<name>/latest` follows the newest numbered run, replaced atomically, and resolves back to its number."""

from __future__ import annotations

import logging

from lmfast.latest import point_latest, real_run_dir


def test_latest_follows_the_newest_version_and_resolves_to_its_number(tmp_path):
    for n in ("0", "1"):
        (tmp_path / n).mkdir()
    point_latest(tmp_path / "0")
    point_latest(tmp_path / "1")
    link = tmp_path / "latest"
    assert link.is_symlink() and link.readlink().as_posix() == "1"  # relative: the tree can move
    assert real_run_dir(link) == tmp_path / "1" and real_run_dir(tmp_path / "0") == tmp_path / "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "latest"]  # no temporary link left


def test_a_real_latest_directory_is_left_alone_with_a_warning(tmp_path, caplog):
    (tmp_path / "0").mkdir()
    (tmp_path / "latest").mkdir()
    with caplog.at_level(logging.WARNING, logger="lmfast"):
        point_latest(tmp_path / "0")
    assert (tmp_path / "latest").is_dir() and not (tmp_path / "latest").is_symlink()
    assert "use the numbered path" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "latest"]
