"""The export directory on disk: what `--overwrite` may replace, staging, and crash leftovers.

An export is written into `.NAME.partial-PID` beside the output and renamed into place. An old
export is first renamed aside to `.NAME.replaced-PID`, then the new one takes its name, then the
old one is deleted: a crash at any instant leaves the old or the new export under NAME, or the old
one aside, which the next run puts back. Leftovers whose PID is no longer running are swept by the
next export into the same parent.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

EXPORT_MARKER = "export.json"
# errors of the output side that are the disk's or the directory's fault, not lmfast's
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class OutputWriteError(OSError):
    """The export could not be written (full disk, read-only or unwritable output)."""


def check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output that exists (without --overwrite), that is not an earlier lmfast export,
    or that is the source or any directory above it.

    Raises:
        FileExistsError: OUTPUT exists and `overwrite` is off.
        ValueError: OUTPUT may not be replaced.
    """
    resolved, origin = output.resolve(), source.resolve()
    if resolved == origin or resolved in origin.parents:
        raise ValueError(
            f"--output {output}: is the source {source} or a directory holding it; choose a new directory"
        )
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{output}: already exists (pass --overwrite to replace it)")
    if output.is_symlink() or not output.is_dir() or not (output / EXPORT_MARKER).is_file():
        raise ValueError(
            f"--output {output}: not an lmfast export (no {EXPORT_MARKER}); --overwrite replaces only "
            "an earlier export"
        )


def staging_dir(output: Path) -> Path:
    """A fresh `.NAME.partial-PID` beside OUTPUT, after sweeping stale leftovers.

    Raises:
        OutputWriteError: the parent directory cannot be written.
    """
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(output)
        staging = parent / f".{output.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as error:
        raise write_error(output, error) from error
    return staging


def sweep_stale(output: Path) -> list[Path]:
    """Remove `.NAME.partial-PID` dirs of dead processes; put a dead run's `.NAME.replaced-PID`
    back where the new export never arrived (else remove it). Returns what was handled."""
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.(partial|replaced)-(\d+)$")
    handled = []
    for path in sorted(output.parent.iterdir()):
        match = pattern.match(path.name)
        if not match or _alive(int(match.group(2))):
            continue
        if match.group(1) == "replaced" and not output.exists():
            os.replace(path, output)
            logger.warning("restored %s from %s (an earlier export was interrupted)", output, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed %s, left by a run that is gone", path)
        handled.append(path)
    return handled


def install(staging: Path, output: Path) -> None:
    """Rename STAGING to OUTPUT, an old export at OUTPUT being renamed aside first."""
    aside = output.parent / f".{output.name}.replaced-{os.getpid()}"
    if output.exists():
        os.replace(output, aside)
    os.replace(staging, output)
    shutil.rmtree(aside, ignore_errors=True)


def write_error(output: Path, error: BaseException) -> BaseException:
    """An OutputWriteError naming OUTPUT if ERROR (or what caused it) is a disk/permission
    error; else ERROR itself."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return OutputWriteError(f"{output}: cannot write the export: {os.strerror(seen.errno)}")
        seen = seen.__cause__ or seen.__context__
    return error


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True
