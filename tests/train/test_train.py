"""End to end on the real Nietzsche dataset with the tiny model: learning, the experiment dir, `hf/`,
exact resume, and a non-finite loss."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from lmfast.train.cli import main
from lmfast.train.config import TrainConfig
from lmfast.train.run import train

from .conftest import read_scalars

pytestmark = pytest.mark.slow


def _common(dataset_dir, root) -> list[str]:
    return [
        "--dataset_dir",
        str(dataset_dir),
        "--model",
        "gpt2-tiny",
        "--experiments_root",
        str(root),
        "--num_workers",
        "0",
    ]


def test_training_lowers_validation_loss_and_writes_the_experiment_dir(dataset_dir, tmp_path, capsys):
    argv = _common(dataset_dir, tmp_path) + [
        "--accelerator",
        "cpu",  # pinned: it checks what a CPU run writes (32-true, no MFU) also where a GPU is
        "--experiment_name",
        "nietzsche",
        "--batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--num_warmup_steps",
        "10",
        "--max_steps",
        "60",
        "--val_check_interval",
        "30",
        "--num_cycles",
        "1",
        "--log_every_n_steps",
        "10",
        "--limit_val_batches",
        "6",
        "--generation_max_new_tokens",
        "16",
    ]
    assert main(argv) == 0
    experiment = tmp_path / "nietzsche" / "0"
    captured = capsys.readouterr()
    assert captured.out.strip().endswith(str(experiment))

    # learning: validation loss at step 0 (sanity check, 2 batches) vs after 60 steps (6 batches)
    samples = [json.loads(line) for line in (experiment / "generated.txt").read_text().splitlines()]
    losses = {s["step"]: s["valid_loss"] for s in samples}
    assert set(losses) == {0, 30, 60}
    assert losses[60] < losses[0] - 2.0, losses
    assert all(isinstance(s["generated"], str) and s["prompt"] for s in samples)
    valid = read_scalars(experiment, "valid/loss")
    assert len(valid) == 2 and valid[59] < valid[29] < 9.0  # Lightning's 0-based step index
    for tag in ("train/loss", "train/lm_loss", "train/ppl", "train/lr", "train/tokens_per_s"):
        assert read_scalars(experiment, tag), tag
    assert not read_scalars(experiment, "train/mfu")  # no known peak on a CPU
    log_text = (experiment / "logs" / "train.log").read_text()
    assert "validation at step 60" in log_text and "tokens/s" in log_text
    assert "step 10/60 epoch 0" in log_text and " eta 0:" in log_text  # where the run is, and when it ends
    for banner in (
        "GPU available",
        "TPU available",
        "litlogger",
        "attention_mask",
        "exists and is not empty",
    ):
        assert banner not in captured.err + log_text, banner

    description = json.loads((experiment / "description.json").read_text())
    assert description["model"] == "gpt2-tiny" and description["resolved_precision"] == "32-true"
    assert description["dataset_description"]["vocab_size"] == 50257 and description["global_step"] == 60

    # checkpoint contract: model.* keys and the HF config, then hf/ loads without lmfast and agrees
    checkpoints = sorted((experiment / "checkpoints").glob("step*.ckpt"))
    assert len(checkpoints) == 2 and (experiment / "checkpoints" / "last.ckpt").is_file()
    for path in checkpoints:  # each name carries the loss of its own step
        step, loss = path.stem.removeprefix("step").split("-val_loss")
        assert float(loss) == pytest.approx(valid[int(step) - 1], abs=1e-4), path.name
    best = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best  # weights only; the full state is in last.ckpt
    assert "optimizer_states" in torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("model.") for k in best["state_dict"])
    assert best["hyper_parameters"]["model_config"]["vocab_size"] == 50304

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(experiment / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(experiment / "hf")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, best["state_dict"][f"model.{name}"], rtol=0, atol=0)
    ids = tokenizer("Supposing that Truth is a woman", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5

    # a bare --resume of the finished run trains nothing and says how to extend it
    assert main(["--resume", "--experiments_root", str(tmp_path), "--experiment_name", "nietzsche"]) == 2
    err = capsys.readouterr().err
    assert f"lmfast train: --resume {experiment}: the run is complete (step 60 of --max_steps 60)" in err
    assert f"lmfast train --resume {experiment} --max_steps 120" in err


def test_a_validation_at_the_last_step_between_intervals(dataset_dir, tmp_path):
    """--max_steps 7 with validations every 4 steps: step 7 is validated too, and hf/ is that step."""
    config = TrainConfig(
        dataset_dir=str(dataset_dir), model="gpt2-tiny", experiments_root=str(tmp_path), batch_size=4,
        learning_rate=3e-3, num_warmup_steps=0, max_steps=7, val_check_interval=4, limit_val_batches=2,
        num_workers=0, num_generated_samples=1, generation_max_new_tokens=4,
    )  # fmt: skip
    experiment = train(config)
    assert sorted(read_scalars(experiment, "valid/loss")) == [3, 6]  # 0-based: steps 4 and 7
    names = sorted(p.name for p in (experiment / "checkpoints").glob("step*.ckpt"))
    assert [n.split("-")[0] for n in names] == ["step0000004", "step0000007"]
    samples = [json.loads(line) for line in (experiment / "generated.txt").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 4, 7]


class _ModeProbe(pl.Callback):
    """Records whether every module of the model is in train mode at each training step."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append(all(m.training for m in pl_module.model.modules()))


def test_a_fine_tune_trains_in_train_mode(dataset_dir, tiny_model_dir, tmp_path):
    """`from_pretrained` returns eval mode (dropout off); the fine-tune must train with dropout on."""
    probe = _ModeProbe()
    config = TrainConfig(
        dataset_dir=str(dataset_dir), model=str(tiny_model_dir), experiments_root=str(tmp_path), batch_size=4,
        max_steps=2, dropout=0.1, val_check_interval=2, limit_val_batches=1, num_workers=0,
        num_generated_samples=0,
    )  # fmt: skip
    train(config, callbacks=[probe])
    assert probe.modes == [True, True]


class _StopAt(pl.Callback):
    """Stops the run after `step` optimizer steps, as a preemption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_after_a_stop_gives_the_same_losses_as_an_uninterrupted_run(dataset_dir, tmp_path):
    common = {
        "dataset_dir": str(dataset_dir),
        "model": "gpt2-tiny",
        "experiments_root": str(tmp_path),
        "batch_size": 8,
        "learning_rate": 2e-3,
        "num_warmup_steps": 2,
        "num_cycles": 1,
        "max_steps": 10,
        "dropout": 0.1,
        "log_every_n_steps": 1,
        "num_workers": 0,
        "val_check_interval": 4,
        "limit_val_batches": 2,
        "num_generated_samples": 0,
    }
    full = train(TrainConfig(**common, experiment_name="full"))
    cut = train(TrainConfig(**common, experiment_name="cut"), callbacks=[_StopAt(6)])
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert main(["--resume", str(cut), "--num_workers", "0"]) == 0  # the CLI path: saved config + overrides

    expected, got = read_scalars(full, "train/loss"), read_scalars(cut, "train/loss")
    assert len(expected) == 10 and sorted(got) == sorted(expected)
    assert [got[s] for s in sorted(got)] == [expected[s] for s in sorted(expected)]  # bit for bit
    assert read_scalars(cut, "train/lr") == read_scalars(full, "train/lr")
    # the stopped run also validated when it stopped; every validation both runs share agrees
    # (at steps 4 and 8 of the interval, and at the last step, 10)
    valid_full, valid_cut = read_scalars(full, "valid/loss"), read_scalars(cut, "valid/loss")
    assert sorted(valid_full) == [3, 7, 9] and all(valid_cut[s] == v for s, v in valid_full.items())


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    dataset_dir, tmp_path, capsys
):
    argv = _common(dataset_dir, tmp_path) + [
        "--batch_size",
        "4",
        "--learning_rate",
        "1e30",
        "--num_warmup_steps",
        "0",
        "--max_steps",
        "20",
        "--checkpoint_every_n_steps",
        "1",
        "--val_check_interval",
        "100",
        "--limit_val_batches",
        "1",
        "--num_generated_samples",
        "0",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "last good checkpoint is kept" in err
    experiment = tmp_path / "default" / "0"
    last = torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= last["global_step"] < 20
    assert (experiment / "hf" / "config.json").is_file()


def test_bf16_mixed_with_clipping_fused_adamw_and_unlikelihood(dataset_dir, tmp_path):
    config = TrainConfig(
        dataset_dir=str(dataset_dir), model="gpt2-tiny", experiments_root=str(tmp_path), precision="bf16-mixed",
        batch_size=4, max_steps=3, gradient_clip_val=0.5, unlikelihood_alpha=0.5, log_every_n_steps=1,
        num_workers=0, val_check_interval=3, limit_val_batches=1, num_generated_samples=0,
    )  # fmt: skip
    experiment = train(config)
    lm, ul, total = (read_scalars(experiment, f"train/{t}") for t in ("lm_loss", "ul_loss", "loss"))
    assert len(total) == 3
    for step, value in total.items():
        assert value == pytest.approx(lm[step] + 0.5 * ul[step], rel=1e-2)  # logged in bf16
        assert 0 < ul[step] < 1
    assert read_scalars(experiment, "valid/ul_loss")
    assert json.loads((experiment / "description.json").read_text())["resolved_precision"] == "bf16-mixed"
