"""Temporary dataset directories that a killed run never leaves behind for good.

A run writes into `<dataset_dir>/.incomplete-XXXX/` and holds an exclusive `flock` on the sibling
`.incomplete-XXXX.lock` (which also names its PID) for as long as it lives. The kernel drops the
lock when the process dies, however it dies (kill -9 included), so the next run can tell stale
directories from live ones without trusting PIDs: it removes every `.incomplete-*` whose lock it
can take, and every one with no lock file at all (the lock file is created before the directory
and removed only after the directory was renamed into place or removed).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = ".incomplete-"
LOCK_SUFFIX = ".lock"


class Staging:
    """One run's temporary directory and the lock that says its owner is alive."""

    def __init__(self, parent: Path) -> None:
        self._fd, lock = tempfile.mkstemp(prefix=PREFIX, suffix=LOCK_SUFFIX, dir=parent)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        self.lock = Path(lock)
        self.directory = self.lock.with_name(self.lock.name[: -len(LOCK_SUFFIX)])
        self.directory.mkdir()

    def _release(self) -> None:
        self.lock.unlink(missing_ok=True)
        os.close(self._fd)

    def commit(self, final: Path) -> None:
        """Rename the directory to `final` (atomic; raises if `final` exists), then drop the lock."""
        os.rename(self.directory, final)
        self._release()

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self._release()


def remove_stale(parent: Path) -> list[Path]:
    """Remove the `.incomplete-*` directories of runs that are gone; returns what was removed."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    locks = {p.name[: -len(LOCK_SUFFIX)] for p in entries if p.name.endswith(LOCK_SUFFIX)}
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        if entry.name.endswith(LOCK_SUFFIX):
            if _owner_gone(entry):
                shutil.rmtree(entry.with_name(entry.name[: -len(LOCK_SUFFIX)]), ignore_errors=True)
                entry.unlink(missing_ok=True)
                removed.append(entry)
        elif entry.name not in locks and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    for path in removed:
        logger.info("removed %s, left by a run that is gone", path)
    return removed


def _owner_gone(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:  # removed meanwhile: its run finished
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: the owner is alive
    finally:
        os.close(fd)
    return True
