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
        "import lmfast.generation.params, lmfast.data.dataset;"
        # every parser lmfast.flags builds (their --help) stays free of the model stack
        "import lmfast.bot.cli as b, lmfast.export.cli as e, lmfast.generation.cli as g;"
        "b.build_parser(); e._parser(); g._parser();"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
