"""`lmfast train` on bad input: exit code 2 and one line naming the flag, before anything is written."""

from __future__ import annotations

import pytest

from lmfast.train.cli import build_parser, config_from_args, main


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lmfast train:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_help_keeps_the_seed_flags():
    text = build_parser().format_help()
    for flag in (
        "--dataset_dir",
        "--model_path",
        "--batch_size",
        "--learning_rate",
        "--num_warmup_steps",
        "--num_cycles",
        "--seed",
        "--experiments_root",
        "--experiment_name",
        "--unlikelihood_alpha",
        "--max_steps",
        "--max_epochs",
        "--precision",
        "--accumulate_grad_batches",
        "--gradient_clip_val",
        "--devices",
        "--num_nodes",
        "--strategy",
        "--val_check_interval",
        "--compile",
        "--resume",
    ):
        assert flag in text


def test_malformed_flag_and_help_return_exit_codes(capsys):
    assert main(["--batch_size", "many"]) == 2
    assert "--batch_size: invalid int value" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_a_prefix_or_a_typo_is_an_unknown_flag_named_with_the_closest_one(capsys):
    # argparse took --max_step as --max_steps; --batchsize printed 35 lines of usage
    for argv, line in (
        (
            ["--dataset_dir", "d", "--max_step", "10"],
            "lmfast train: unknown flag --max_step (did you mean --max_steps?)",
        ),
        (["--batchsize", "4"], "lmfast train: unknown flag --batchsize (did you mean --batch_size?)"),
    ):
        assert main(argv) == 2
        assert capsys.readouterr().err == line + "\n"


def test_flags_parse_into_the_config():
    config = config_from_args(
        [
            "--dataset_dir",
            "d",
            "--model_path",
            "m",
            "--compile",
            "--val_check_interval",
            "50",
            "--gradient_clip_val",
            "none",
            "--devices",
            "0,1",
        ]
    )
    assert (config.model, config.compile, config.val_check_interval, config.gradient_clip_val) == (
        "m",
        True,
        50,
        None,
    )
    assert isinstance(config.val_check_interval, int) and config.devices_value() == [0, 1]


def test_not_a_dataset_dir(tmp_path, capsys):
    assert main(["--dataset_dir", str(tmp_path), "--experiments_root", str(tmp_path / "e")]) == 2
    line = _error_line(capsys)
    assert "--dataset_dir" in line and "not an lmfast dataset" in line
    assert not (tmp_path / "e").exists()


def test_model_dir_with_a_smaller_vocabulary(dataset_dir, tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(vocab_size=1000, n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "small")
    argv = [
        "--dataset_dir",
        str(dataset_dir),
        "--model",
        str(tmp_path / "small"),
        "--experiments_root",
        str(tmp_path),
    ]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "--model" in line and "vocabulary of 1000 tokens is smaller than the dataset's 50257" in line


def test_batch_larger_than_the_dataset(dataset_dir, tmp_path, capsys):
    argv = [
        "--dataset_dir",
        str(dataset_dir),
        "--batch_size",
        "100000",
        "--experiments_root",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 2
    assert "--batch_size 100000: larger than the dataset" in _error_line(capsys)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset_dir", "d", "--precision", "fp8"], "--precision"),
        (["--dataset_dir", "d", "--batch_size", "0"], "--batch_size must be >= 1"),
        ([], "--dataset_dir is required"),
        (["--resume", "--experiments_root", "/nonexistent"], "--resume: no run with checkpoints/last.ckpt"),
    ],
)
def test_bad_flags(argv, message, capsys):
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_resume_from_a_corrupt_description_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "description.json").write_text("{oops", encoding="utf-8")
    assert main(["--resume", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"lmfast train: --resume {tmp_path / 'description.json'}: not JSON (")
