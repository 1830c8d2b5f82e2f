"""Each command's bad-input line, byte for byte, now that its handler raises a `UserError` that
`flags.run` prints (serve, export, generate and eval --tasks kept their lines without `error:`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfast.__main__ import main


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["generate", "{missing}", "--prompt", "x"], "lmfast generate: {missing}: no such file or directory"),
        (["generate", "{missing}", "--prompt", "a", "--prompt", "b", "--stream"], "lmfast generate: --stream takes exactly one --prompt"),
        (["serve", "{missing}"], "lmfast serve: MODEL: {missing} is not a directory or a .gguf file"),
        (["serve"], "lmfast serve: MODEL: give a model directory (argument or LMFAST_MODEL)"),
        (["serve", "{tmp}"], "lmfast serve: MODEL: {tmp}: not a model directory (expected an export dir with model.onnx, an experiment dir with hf/, a Hugging Face model dir with config.json, or a .gguf file)"),
        (["export", "onnx", "{missing}", "--output", "{tmp}/out"], "lmfast export onnx: {missing}: no such file or directory"),
        # main printed a traceback here (the except clause named a class imported after the config failed)
        (["export", "onnx", "{missing}", "--output", "{tmp}/out", "--precision", "bf16", "--quantize", "int4"], "lmfast export onnx: --quantize int4 applies to fp32 weights; drop --precision bf16"),
        (["eval", "{missing}", "--tasks", "lmfast_mini_mc"], "lmfast eval: SOURCE: {missing} does not exist"),
    ],
)  # fmt: skip
def test_bad_input_is_the_same_one_line_and_exit_2(argv, line, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("LMFAST_MODEL", raising=False)
    names = {"missing": tmp_path / "missing", "tmp": tmp_path}
    assert main([arg.format(**names) for arg in argv]) == 2
    assert capsys.readouterr().err == line.format(**names) + "\n"
    assert not (tmp_path / "out").exists()
