"""The top-level CLI: light start-up, a listed table of subcommands, clear errors."""

from __future__ import annotations

import subprocess
import sys

from lmfast.__main__ import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in SUBCOMMANDS.items():
        assert name in out and summary in out


def test_unknown_command_exits_2(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_no_command_is_an_error_with_the_usage(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: lmfast <command>" in captured.err
    assert subprocess.run([sys.executable, "-m", "lmfast"], capture_output=True).returncode == 2


def test_help_and_import_leave_torch_unimported():
    code = (
        "import sys, lmfast; from lmfast.__main__ import main; main(['--help']);"
        "import lmfast.generation.params, lmfast.models.dataset;"
        # every parser lmfast.flags builds (their --help) stays free of the model stack
        "import lmfast.bot.cli as b, lmfast.export.cli as e, lmfast.generation.cli as g;"
        "b.build_parser(); e._parser(); g._parser();"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_flag_and_positional_of_every_subcommand_says_what_it_takes(capsys):
    """`<command> --help` of each subcommand: no flag without help text, none left out of a mode."""
    import argparse

    names = [n for n in SUBCOMMANDS if n != "demo"] + ["export onnx"]
    for name in names:
        try:  # `lmfast generate --help` exits through argparse's SystemExit
            code = main([*name.split(), "--help"])
        except SystemExit as done:
            code = done.code
        assert code in (0, None), name
        text = capsys.readouterr().out
        assert "usage:" in text, name
    for argv in (["eval", "--help"], ["demo", "--help"]):  # eval: both modes; demo: its own flags
        assert main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--tasks TASKS" in text and "--dataset_dir" in text
    assert "text the served model continues (default: 'Supposing that Truth is a woman')" in text
    assert "training steps of the tiny model (default: 300)" in text

    from lmfast.bot.cli import build_parser as bot
    from lmfast.data.cli import build_parser as prepare
    from lmfast.evaluation.cli import build_parser as evaluate
    from lmfast.evaluation.tasks import build_parser as tasks
    from lmfast.serving.cli import build_parser as serve
    from lmfast.train.cli import build_parser as train

    for parser in (bot(), prepare(), evaluate(), tasks(), serve(), train()):
        silent = [a.dest for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
        assert not silent, (parser.prog, silent)
    model = next(a for a in train()._actions if a.dest == "model")
    assert ".gguf" in model.help
