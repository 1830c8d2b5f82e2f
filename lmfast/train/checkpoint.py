"""Lightning's checkpoint writer and reader with lmfast's checksum (the format: `lmfast.models.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmfast.models.checkpoint import load_checkpoint, with_checksum


class ChecksummedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer/reader with the checksum added on save and verified on load.

    `preload` verifies a checkpoint before training starts (so a bad `--resume` fails up front) and
    keeps it for the `load_checkpoint` that Lightning makes at fit start: the file is read once.
    """

    def __init__(self) -> None:
        self._preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, path: str | Path) -> dict[str, Any]:
        checkpoint = load_checkpoint(path)
        self._preloaded[str(Path(path).resolve())] = checkpoint
        return checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Written beside, then renamed over `path`: a kill mid-write leaves the previous file whole."""
        path = Path(path)
        partial = path.parent / f".incomplete-{os.getpid()}.tmp"  # no "last" in it: Lightning lists those
        try:
            super().save_checkpoint(with_checksum(checkpoint), partial, storage_options)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        kept = self._preloaded.pop(str(Path(path).resolve()), None)
        return kept if kept is not None else load_checkpoint(path)
