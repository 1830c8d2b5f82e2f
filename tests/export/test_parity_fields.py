"""The parity report's per-prompt counts cannot contradict `greedy_tokens_identical`."""

from __future__ import annotations

from lmfast.export.parity import divergence


def test_identical_greedy_tokens_count_every_step_even_when_both_stop_early():
    assert divergence([7], [7], 32) == 32  # both stopped at EOS after one token: no divergence
    assert divergence([1, 2, 3], [1, 2, 3], 3) == 3
    assert divergence([1, 2, 3], [1, 5, 3], 3) == 1
    assert divergence([1, 2], [1, 2, 3], 3) == 2  # one stopped (EOS) where the other went on
