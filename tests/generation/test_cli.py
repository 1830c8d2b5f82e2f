"""`lmfast generate`: flags built from GenerationParams, output, and one-line errors."""

from __future__ import annotations

import json

from lmfast.generation.cli import main


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
