"""ServeConfig and `lmfast serve` flags: env variables, validation, one-line errors, light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmfast.serving.cli import build_parser, main
from lmfast.serving.config import ServeConfig


def test_env_variables_fill_fields_and_flags_win():
    env = {
        "LMFAST_PORT": "9001",
        "LMFAST_MAX_BATCH_SIZE": "4",
        "LMFAST_API_KEY": "k",
        "LMFAST_MAX_WAIT_MS": "2.5",
    }
    config = ServeConfig.from_env(env, port=9002)
    assert (config.port, config.max_batch_size, config.api_key, config.max_wait_ms) == (9002, 4, "k", 2.5)


def test_malformed_env_variable_is_named():
    with pytest.raises(ValueError, match="LMFAST_QUEUE_SIZE"):
        ServeConfig.from_env({"LMFAST_QUEUE_SIZE": "many"})


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("port", 0, "--port"),
        ("max_batch_size", 0, "--max_batch_size"),
        ("request_timeout_s", 0, "--request_timeout_s"),
        ("spin_us", -1, "--spin_us"),
    ],
)
def test_invalid_values_name_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        ServeConfig(**{field: value})


def test_api_key_is_masked_in_to_dict():
    assert ServeConfig(api_key="secret").to_dict()["api_key"] == "***"
    assert ServeConfig(api_key="").api_key is None


def test_every_field_is_a_flag_with_its_docstring_as_help():
    help_text = build_parser().format_help()
    for name in ServeConfig.__dataclass_fields__:
        if name != "model":
            assert f"--{name}" in help_text
    assert "1 turns batching off" in help_text


def test_cli_errors_exit_2_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LMFAST_MODEL", raising=False)
    assert main([]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "lmfast serve: MODEL: give a model directory (argument or LMFAST_MODEL)"
    )
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in" in capsys.readouterr().err
    assert main([str(tmp_path), "--backend", "tensorflow"]) == 2


def test_cli_reports_a_directory_without_a_model(capsys, tmp_path):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmfast serve: MODEL:") and "\n" not in err


def test_serve_help_leaves_torch_and_fastapi_unimported():
    code = (
        "import sys; from lmfast.__main__ import main; main(['serve', '--help']);"
        "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--max_batch_size" in result.stdout
