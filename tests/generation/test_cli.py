"""`lmfast generate`: flags built from GenerationParams, output, and one-line errors."""

from __future__ import annotations

import dataclasses
import json

from lmfast.flags import field_docs
from lmfast.generation.cli import HTTP_ONLY, main
from lmfast.generation.params import GenerationParams


def test_generate_prints_json_continuations_for_each_prompt(varied_model_dir, torch_generator, capsys):
    args = [str(varied_model_dir), "--prompt", "Truth is", "--prompt", "God", "--max_new_tokens", "6"]
    assert main([*args, "--temperature", "0", "--num_return_sequences", "2", "--json"]) == 0
    texts = json.loads(capsys.readouterr().out)["texts"]
    assert [len(t) for t in texts] == [2, 2]
    assert (
        texts[0]
        == torch_generator(["Truth is"], max_new_tokens=6, temperature=0.0, num_return_sequences=2)[0]
    )


def test_generate_streams_one_prompt(varied_model_dir, torch_generator, capsys):
    assert (
        main(
            [
                str(varied_model_dir),
                "--prompt",
                "Truth is",
                "--max_new_tokens",
                "6",
                "--stream",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    expected = torch_generator("Truth is", max_new_tokens=6, seed=1)[0][0]
    assert capsys.readouterr().out == expected + "\n"


def test_bad_input_exits_2_with_one_line(tmp_path, varied_model_dir, capsys):
    assert main([str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main([str(varied_model_dir), "--prompt", "x", "--temperature", "-1"]) == 2
    err = capsys.readouterr().err
    assert "temperature" in err and err.count("\n") == 1
    assert main([str(varied_model_dir), "--prompt", "a", "--prompt", "b", "--stream"]) == 2


def test_help_shows_every_sampling_flag_with_its_meaning_and_default(capsys):
    assert main(["--help"]) == 0  # flags.run turns argparse's SystemExit into the exit code
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    defaults, docs = GenerationParams(), field_docs(GenerationParams)
    http_only = set(HTTP_ONLY)
    for f in dataclasses.fields(GenerationParams):
        if f.name in http_only:
            assert f"--{f.name}" not in out
            continue
        default = getattr(defaults, f.name)
        shown = "none" if default in (None, []) else default
        # the help is the field's attribute docstring in params.py, the one description of it
        assert f"--{f.name}" in out and f"{docs[f.name]} (default: {shown})" in out, f.name
