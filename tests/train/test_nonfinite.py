"""The non-finite loss watch (read at log steps, not every step) and the 16-mixed step logic:
a loss scaler skips an overflowed step, with fused or plain AdamW, and clipping sees true gradients."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch

from lmfast.train.clipping import clip_gradients
from lmfast.train.module import LMModule
from lmfast.train.nonfinite import NonFiniteLossError, NonFiniteWatch

INF = torch.tensor(float("inf"))
NAN = torch.tensor(float("nan"))
ONE = torch.tensor(1.0)


def _observe(watch: NonFiniteWatch, losses: list[torch.Tensor]) -> tuple[int, int]:
    for loss in losses:
        watch.observe(loss)
    return watch.pending()


def test_without_a_scaler_any_non_finite_loss_since_the_last_check_stops():
    watch = NonFiniteWatch(tolerate=False)
    assert _observe(watch, [ONE, ONE]) == (0, 0) and not watch.verdict(0, 0)
    since, consecutive = _observe(watch, [ONE, NAN, ONE])
    assert (since, consecutive) == (1, 0)  # found at the check even though the last loss is fine
    assert watch.verdict(since, consecutive)


def test_with_a_scaler_overflows_are_skipped_until_too_many_in_a_row():
    watch = NonFiniteWatch(tolerate=True, max_consecutive=4)
    since, consecutive = _observe(watch, [INF, ONE, INF, INF])
    assert (since, consecutive) == (3, 2) and not watch.verdict(since, consecutive)
    since, consecutive = _observe(watch, [INF])  # the run of overflows goes on across checks
    assert (since, consecutive) == (1, 3) and not watch.verdict(since, consecutive)
    since, consecutive = _observe(watch, [INF, INF])
    assert consecutive == 5 and watch.verdict(since, consecutive)
    assert watch.skipped == 6


def test_nothing_observed_is_nothing_to_report():
    assert NonFiniteWatch().pending() == (0, 0)


@pytest.mark.parametrize("fused", [True, False])
def test_the_scaler_skips_an_overflowed_step_and_clipping_sees_unscaled_gradients(fused):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(3, 4)

    def step(scale_loss_by: float) -> torch.Tensor:
        optimizer.zero_grad()
        scaler.scale(model(x).square().mean() * scale_loss_by).backward()
        if not fused:  # Lightning unscales itself for an optimizer that does not; ours must not again
            scaler.unscale_(optimizer)
        norm = clip_gradients(optimizer, 1.0, scaler)
        scaler.step(optimizer)
        scaler.update()
        return norm

    before = [p.detach().clone() for p in model.parameters()]
    norm = step(float("inf"))  # an fp16 overflow: the gradients are inf
    assert not torch.isfinite(norm)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))  # skipped
    assert scaler.get_scale() == 2.0**9  # and the scale lowered
    reference = copy.deepcopy(model)
    reference(x).square().mean().backward()
    true_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf"))
    norm = step(1.0)
    assert float(norm) == pytest.approx(float(true_norm), rel=1e-5)  # the norm of unscaled gradients
    assert not torch.equal(before[0], model.weight)  # and a real step


class _OverflowAt(LMModule):
    """LMModule whose loss overflows (inf) at the given batch indices, as fp16 activations may."""

    def __init__(self, *args, overflow_at: tuple[int, ...], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.overflow_at = overflow_at
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        if batch_idx in self.overflow_at:
            original = self._losses
            self._losses = lambda b: {
                k: v * float("inf") if k == "total" else v for k, v in original(b).items()
            }
            try:
                return super().training_step(batch, batch_idx)
            finally:
                del self._losses
        return super().training_step(batch, batch_idx)


def _tiny_run(
    precision_plugin, overflow_at: tuple[int, ...], steps: int = 6
) -> tuple[pl.Trainer, _OverflowAt]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    module = _OverflowAt(GPT2LMHeadModel(config), learning_rate=1e-3, overflow_at=overflow_at)
    ids = torch.randint(0, 64, (steps * 2, 16))
    batches = [
        {
            "input_ids": ids[i : i + 2],
            "attention_mask": torch.ones(2, 16, dtype=torch.int64),
            "labels": ids[i : i + 2],
        }
        for i in range(0, steps * 2, 2)
    ]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=1.0, log_every_n_steps=2,
        plugins=[precision_plugin] if precision_plugin else None, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # each item is already a batch
    trainer.fit(module, train_dataloaders=loader)
    return trainer, module


def test_16_mixed_skips_an_overflowed_step_and_the_run_goes_on():
    """Lightning's own 16-mixed plugin (GradScaler, fused AdamW, lmfast's clipping), forced on a CPU."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer, module = _tiny_run(MixedPrecision("16-mixed", "cpu", scaler=scaler), overflow_at=(2,))
    assert module._watch.tolerate and module._watch.skipped == 1
    assert scaler.get_scale() == 2.0**7  # halved once, by the one overflowed step
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.optimizers[0].defaults.get("fused")  # the path Lightning's AMP refuses to clip


def test_32_true_stops_on_a_non_finite_loss_at_the_next_check():
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        _tiny_run(None, overflow_at=(2,))
