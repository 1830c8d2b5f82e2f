"""`resolve_source`: every layout a stage may be given, told apart in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfast.models.source import resolve_source


def _touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("files", "kind", "origin", "where"),
    [
        (["model.onnx", "config.json"], "onnx", "export", "."),
        (["hf/config.json", "adapter/adapter_config.json"], "hf", "experiment", "hf"),
        (["adapter/adapter_config.json"], "lora_adapter", "experiment", "adapter"),
        (["adapter_config.json"], "lora_adapter", "lora_adapter", "."),
        (["config.json"], "hf", "hf", "."),
    ],
)
def test_directory_layouts(tmp_path, files, kind, origin, where):
    for name in files:
        _touch(tmp_path / name)
    source = resolve_source(tmp_path)
    assert (source.kind, source.origin, source.path) == (
        kind,
        origin,
        (tmp_path / where).resolve(strict=False),
    )
    assert source.given == tmp_path
    assert source.backend == ("onnx" if kind == "onnx" else "torch")


def test_checkpoint_file(tmp_path):
    ckpt = _touch(tmp_path / "last.ckpt", "")
    source = resolve_source(ckpt)
    assert (source.kind, source.origin, source.path) == ("checkpoint", "checkpoint", ckpt)


def test_refusals_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: no such file or directory"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"not a model directory \(expected an export dir"):
        resolve_source(tmp_path, ("onnx", "hf"))
    with pytest.raises(
        ValueError,
        match=r"not a checkpoint or model \(expected an experiment dir with hf/, .*, or a .ckpt file\)",
    ):
        resolve_source(tmp_path, ("hf", "checkpoint"))
    _touch(tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="holds an ONNX export; expected an experiment dir"):
        resolve_source(tmp_path, ("hf", "checkpoint"))
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve_source(_touch(tmp_path / "fake.gguf", "not gguf"))
