"""Checkpoint files that prove their own integrity: a CRC-32 of every value travels inside the `.ckpt`.

torch's zip reader skips the zip CRC checks, so a checkpoint with a zeroed block loads "fine" and
resumes silently wrong. Every checkpoint lmfast writes carries `lmfast_checksum` (CRC-32 over each
tensor's bytes and each plain value, in key order), and `load_checkpoint` recomputes it: a
truncated, empty, random or zeroed file is one `CheckpointError` naming the file.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

CHECKSUM_KEY = "lmfast_checksum"


class CheckpointError(ValueError):
    """The file is not a readable lmfast checkpoint, or its content no longer matches its checksum."""


def _update(crc: int, key: str, value: Any) -> int:
    crc = zlib.crc32(key.encode("utf-8", "surrogatepass"), crc)
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(f"{tensor.dtype}{tuple(value.shape)}".encode(), crc)
        return zlib.crc32(tensor.view(torch.uint8).numpy().data, crc) if tensor.numel() else crc
    if isinstance(value, dict):
        for k in sorted(value, key=str):
            crc = _update(crc, f"{key}/{k}", value[k])
        return crc
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            crc = _update(crc, f"{key}[{i}]", item)
        return crc
    return zlib.crc32(repr(value).encode("utf-8", "surrogatepass"), crc)


def checksum(checkpoint: dict[str, Any]) -> int:
    """CRC-32 over every entry but the checksum itself (tensors by their raw bytes)."""
    crc = 0
    for key in sorted(checkpoint):
        if key != CHECKSUM_KEY:
            crc = _update(crc, key, checkpoint[key])
    return crc


def with_checksum(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The same dict with `lmfast_checksum` set (what every lmfast `.ckpt` holds)."""
    checkpoint[CHECKSUM_KEY] = {"algorithm": "crc32", "value": checksum(checkpoint)}
    return checkpoint


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a `.ckpt` (tensors and plain values only) and verify its checksum.

    A checkpoint without `lmfast_checksum` (written before lmfast had one) is accepted as is.

    Raises:
        CheckpointError: missing, empty, truncated or not a checkpoint, or a checksum mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle and storage errors all mean "unreadable"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted: {reason})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    saved = checkpoint.get(CHECKSUM_KEY)
    if saved is not None:
        expected = saved.get("value") if isinstance(saved, dict) else None
        if expected != checksum(checkpoint):
            raise CheckpointError(
                f"{path}: checksum mismatch, the file is corrupted (content changed after it was written)"
            )
    return checkpoint


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
