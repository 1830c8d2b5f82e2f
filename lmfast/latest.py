"""`<root>/<name>/latest`: the newest numbered run of a dataset or experiment, for paths that follow it.

Every `lmfast prepare` and `lmfast train` writes a fresh `<root>/<name>/<N>`, so a script naming
`nietzsche/0` breaks after any repeated or interrupted run. Each also points `<name>/latest` at
the version it wrote (a relative symlink, replaced atomically), and every command takes that
path as it takes `<N>`: `lmfast export onnx data/experiments/nietzsche/latest ...`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LATEST = "latest"

log = logging.getLogger("lmfast")


def point_latest(version_dir: Path) -> None:
    """Make `<version_dir's parent>/latest` point at `version_dir` (where symlinks can be made)."""
    link = version_dir.parent / LATEST
    temporary = version_dir.parent / f".{LATEST}-{os.getpid()}"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(version_dir.name, target_is_directory=True)
        os.replace(temporary, link)  # atomic: a reader sees the old or the new target, never none
    except OSError as error:  # no symlinks on this file system, or a real `latest/` dir: numbers still work
        temporary.unlink(missing_ok=True)
        log.warning("could not point %s at %s (%s); use the numbered path", link, version_dir.name, error)


def real_run_dir(path: str | Path) -> Path:
    """`<name>/latest` as the numbered dir it points at (a resumed run keeps writing to its own N)."""
    path = Path(path)
    if path.name == LATEST and path.is_symlink():
        return path.parent / os.readlink(path)
    return path
