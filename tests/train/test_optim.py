"""AdamW groups and the warmup + cosine-with-restarts schedule."""

from __future__ import annotations

import math

from transformers import GPT2Config, GPT2LMHeadModel

from lmfast.train.optim import make_adamw, param_groups, warmup_cosine_lambda


def test_no_decay_on_norms_and_biases():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") or ".ln_" in names[id(p)] for p in no_decay["params"])
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    optimizer = make_adamw(model, 1e-3, 0.1, (0.9, 0.95))
    assert optimizer.defaults["fused"] is True  # torch has a fused CPU AdamW


def test_schedule_warmup_constant_and_restarts():
    constant = warmup_cosine_lambda(4, 100, 0)
    assert [round(constant(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert constant(99) == 1.0
    two = warmup_cosine_lambda(0, 100, 2)
    assert two(0) == 1.0 and math.isclose(two(25), 0.5, abs_tol=1e-9)
    assert two(49) < 0.01 and two(50) == 1.0  # hard restart at the start of the second cycle
    assert two(100) == 0.0
