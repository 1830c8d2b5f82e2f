"""Fine-tuning the real SmolLM2-135M-Instruct: full and LoRA, a few steps each (slow, real weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmfast.train.cli import main
from lmfast.train.config import TrainConfig
from lmfast.train.run import train

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_dataset(smollm2_dir, nietzsche_dir, tmp_path_factory):
    """Nietzsche prepared with SmolLM2's own tokenizer (short samples: quick steps)."""
    root = tmp_path_factory.mktemp("smol_datasets")
    command = [
        sys.executable, "-m", "lmfast.prepare",
        "--documents_train_file", str(nietzsche_dir / "train.txt"),
        "--documents_valid_file", str(nietzsche_dir / "valid.txt"),
        "--end_of_document", "[END_OF_DOCUMENT]", "--tokenizer_cls_name", str(smollm2_dir),
        "--tokenizer_engine", "tokenizers", "--max_sample_length", "32", "--min_sample_length", "8",
        "--datasets_root", str(root), "--dataset_name", "smol",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root / "smol" / "0"


def _config(dataset, model, root, **changes) -> TrainConfig:
    values = dict(
        dataset_dir=str(dataset), model=str(model), experiments_root=str(root), batch_size=2, max_steps=1,
        learning_rate=1e-4, num_warmup_steps=0, val_check_interval=1, limit_val_batches=1, num_workers=0,
        num_generated_samples=0,
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def test_full_fine_tune_keeps_the_source_tokenizer_and_generation_config(smol_dataset, smollm2_dir, tmp_path):
    experiment = train(_config(smol_dataset, smollm2_dir, tmp_path))
    hf = experiment / "hf"
    assert (hf / "chat_template.jinja").read_text() == (smollm2_dir / "chat_template.jinja").read_text()
    source_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    saved_config = json.loads((hf / "tokenizer_config.json").read_text())
    for key in ("eos_token", "bos_token", "unk_token", "pad_token"):
        assert saved_config.get(key) == source_config.get(key), key
    generation = json.loads((hf / "generation_config.json").read_text())
    assert (
        generation["eos_token_id"]
        == json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"]
    )
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(hf).get_vocab()
        == AutoTokenizer.from_pretrained(smollm2_dir).get_vocab()
    )
    best = next((experiment / "checkpoints").glob("step*.ckpt"))
    assert "optimizer_states" not in torch.load(best, weights_only=True)  # weights only for the top-k


def test_lora_trains_and_checkpoints_only_the_adapters_and_resumes(smol_dataset, smollm2_dir, tmp_path):
    experiment = train(
        _config(smol_dataset, smollm2_dir, tmp_path, lora_r=4, lora_target_modules="q_proj,v_proj")
    )
    last = torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["state_dict"] and all(".lora_" in key for key in last["state_dict"])
    assert last["hyper_parameters"]["lora"]["config"]["r"] == 4
    adapter = json.loads((experiment / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]

    assert main(["--resume", str(experiment), "--max_steps", "2", "--num_workers", "0"]) == 0
    resumed = torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 and set(resumed["state_dict"]) == set(last["state_dict"])
    assert any(not torch.equal(resumed["state_dict"][k], v) for k, v in last["state_dict"].items())

    # hf/ is the base with the adapter merged in; untouched weights are the base's exactly
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(experiment / "hf").state_dict()
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    expected = PeftModel.from_pretrained(base, experiment / "adapter").merge_and_unload().state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(smollm2_dir).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(merged[q], plain[q]) and torch.equal(merged[k], plain[k])


def test_a_file_that_is_not_gguf_is_refused(dataset_dir, tmp_path, capsys):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file")
    assert main(["--dataset_dir", str(dataset_dir), "--model", str(bogus)]) == 2
    assert "a file that is not GGUF" in capsys.readouterr().err
