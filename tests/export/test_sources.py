"""Sources beyond lmfast's own: a real GGUF model, and every eos id of generation_config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmfast.export import ExportConfig
from lmfast.generation import GenerationParams, Generator
from lmfast.generation.model_files import ModelInfo

GREEDY = GenerationParams(max_new_tokens=6, temperature=0.0)


def test_generation_config_eos_ids_join_the_configs(varied_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(varied_model_dir, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [50256, 11, 13]}))
    assert ModelInfo.from_dir(model).eos_token_ids == (50256, 11, 13)
    assert ModelInfo.from_dir(varied_model_dir).eos_token_ids == (50256,)


@pytest.mark.slow
def test_every_eos_id_stops_generation_on_torch_and_the_export(varied_model_dir, tmp_path, prompts):
    from lmfast.export import export_onnx

    first = Generator.load(varied_model_dir).session()
    row = first.add(prompts[0], GREEDY)[0]
    token = next(e.token_id for e in first.step() if e.row_id == row)
    model = tmp_path / "model"
    shutil.copytree(varied_model_dir, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [50256, token]}))
    output = export_onnx(ExportConfig(source=model, output=tmp_path / "export", parity_steps=4))
    assert json.loads((output / "config.json").read_text())["eos_token_id"] == [50256, token]
    for path in (model, output):
        session = Generator.load(path).session()
        session.add(prompts[0], GREEDY)
        events = session.step()
        assert [e.finish_reason for e in events] == ["eos"], path


@pytest.mark.slow
def test_real_smollm2_gguf_exports_with_greedy_equal_to_hf(smollm2_gguf, tmp_path, monkeypatch):
    """The real SmolLM2-135M-Instruct, given as its .gguf file: fp32 parity, the chat template
    and special tokens carried over, and lmfast's greedy ONNX tokens equal to HF `generate`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmfast.export.cli import main
    from lmfast.models.source import resolve_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "smollm2"
    assert main(["onnx", str(smollm2_gguf), "--output", str(output), "--parity_steps", "8"]) == 0
    description = json.loads((output / "export.json").read_text())
    assert description["source"]["kind"] == "gguf" and description["parity"]["passed"]
    assert "<|im_start|>" in (output / "chat_template.jinja").read_text()
    assert json.loads((output / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"

    hf_dir = resolve_source(smollm2_gguf).path
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.padding_side = "left"
    prompts = ["The capital of France is", "Gravity is", "Once upon a time, in a small village,"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    new = 12
    hf = model.generate(**batch, max_new_tokens=new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    generator = Generator.load(output)
    session = generator.session()
    params = GenerationParams(max_new_tokens=new, temperature=0.0)
    rows = [session.add_token_ids(tokenizer(p)["input_ids"], params)[0] for p in prompts]
    tokens = {row: [] for row in rows}
    while len(session):
        for event in session.step():
            tokens[event.row_id].append(event.token_id)
    # HF pads a finished row with pad == eos (<|im_end|>); lmfast ends the row there
    width, pad = batch["input_ids"].shape[1], tokenizer.pad_token_id
    expected = [[t for t in row[width:] if t != pad] for row in hf.tolist()]
    assert [[t for t in tokens[row] if t != pad] for row in rows] == expected
    assert any(len(row) > 3 for row in expected)


def _lora_adapter(model_dir: Path, adapter_dir: Path) -> None:
    """A PEFT LoRA adapter on MODEL_DIR with non-zero weights (so merging changes the model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(adapter_dir)


@pytest.mark.slow  # one real ONNX export with parity (~20 s on 2 loaded cores)
def test_a_lora_adapter_exports_merged_onto_its_base(varied_model_dir, tmp_path, prompts):
    """An experiment whose only model is its LoRA adapter/: merged onto the base, exported, and the
    export's greedy tokens are the merged model's (not the base's)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmfast.export.cli import main
    from lmfast.generation.torch_backend import TorchBackend

    experiment = tmp_path / "experiment"
    _lora_adapter(varied_model_dir, experiment / "adapter")
    output = tmp_path / "export"
    assert main(["onnx", str(experiment), "--output", str(output), "--parity_steps", "4"]) == 0
    source = json.loads((output / "export.json").read_text())["source"]
    assert source["kind"] == "experiment" and source["base_model"] == str(varied_model_dir)
    base = AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, experiment / "adapter").merge_and_unload().eval()
    exported = Generator.load(output)
    from_merged = Generator(TorchBackend(merged), exported.codec, exported.info)
    assert exported(prompts, GREEDY) == from_merged(prompts, GREEDY)
    from_base = Generator.load(varied_model_dir, backend="torch")
    assert exported(prompts, GREEDY) != from_base(prompts, GREEDY)  # the adapter was applied


def test_an_adapter_whose_base_is_not_on_disk_is_one_line_exit_2(tmp_path, capsys):
    from lmfast.export.cli import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M", "r": 4}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(["onnx", str(adapter), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'HuggingFaceTB/SmolLM2-135M' is not available offline" in err
    assert not (tmp_path / "out").exists()
