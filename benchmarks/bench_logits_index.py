"""What the `logits_index` input (prompt logprobs) costs a normal request on the ONNX backend.

Compares two exports of the same weights: one made before `logits_index` existed (last-position
logits only, e.g. exported by an older lmfast) and one made now. A normal request feeds
`logits_index = [T - 1]`, so the only change is an index_select where a slice was. Measured in
lmfast's own decode loop (Generator: prefill + greedy decode), contenders alternated each round,
intra-op threads set explicitly, machine load recorded before and after.

    python benchmarks/bench_logits_index.py --old DIR --new DIR [--rounds 10] [--num_threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from lmfast.generation import Generator

PROMPT = "Thus spoke Zarathustra, and the sun rose over the mountains of his cave " * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="export dir without logits_index")
    parser.add_argument("--new", required=True, help="export dir with logits_index")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args()
    load_before = os.getloadavg()
    generators = {
        name: Generator.load(path, backend="onnx", num_threads=args.num_threads)
        for name, path in (("old", args.old), ("new", args.new))
    }
    assert not generators["old"].backend.has_logits_index and generators["new"].backend.has_logits_index
    # correctness first: same greedy text and same last-position logits on a left-padded batch
    batches = {"batch 1": [PROMPT], "batch 8": [PROMPT[: 40 + 25 * i] for i in range(8)]}
    texts = {n: g(batches["batch 8"], max_new_tokens=8, temperature=0.0) for n, g in generators.items()}
    assert texts["old"] == texts["new"], "the two exports disagree"
    ids = np.array([generators["new"].codec.encode(PROMPT)[:48]], dtype=np.int64)
    mask, positions = np.ones_like(ids), np.arange(ids.shape[1])[None, :]
    old_logits, _ = generators["old"].backend.forward(ids, mask, positions, None)
    new_logits, _ = generators["new"].backend.forward(ids, mask, positions, None)
    all_logits, _ = generators["new"].backend.forward(ids, mask, positions, None, all_logits=True)
    np.testing.assert_allclose(new_logits, old_logits, atol=1e-5)
    np.testing.assert_allclose(all_logits[:, -1], old_logits, atol=1e-5)

    times: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        order = ["old", "new"] if round_index % 2 == 0 else ["new", "old"]
        for batch_name, prompts in batches.items():
            for name in order:
                started = time.perf_counter()
                generators[name](prompts, max_new_tokens=args.new_tokens, temperature=0.0)
                times.setdefault((batch_name, name), []).append(time.perf_counter() - started)
    steps = _decode_steps(generators, ids, args.rounds)
    load_after = os.getloadavg()
    print(
        f"threads {args.num_threads}, {args.rounds} rounds alternated, {args.new_tokens} new tokens per row"
    )
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    for label, pick in (("median", statistics.median), ("best", min)):
        old, new = pick(steps["old"]), pick(steps["new"])
        print(
            f"decode step, batch 1 {label}: old {old * 1e3:.3f} ms, new {new * 1e3:.3f} ms, new/old {new / old:.3f}"
        )
    for batch_name in batches:
        for label, pick in (("median", statistics.median), ("best", min)):  # best: least disturbed
            old, new = pick(times[(batch_name, "old")]), pick(times[(batch_name, "new")])
            print(
                f"{batch_name} {label}: old {old * 1000:.1f} ms, new {new * 1000:.1f} ms, new/old {new / old:.3f}"
            )


def _decode_steps(generators: dict[str, Generator], ids: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Bare decode steps (batch 1, a 48-column cache): 20 steps per contender per round, alternated."""
    state = {}
    for name, generator in generators.items():
        mask, positions = np.ones_like(ids), np.arange(ids.shape[1])[None, :]
        _, past = generator.backend.forward(ids, mask, positions, None)
        state[name] = past
    token = ids[:, -1:]
    mask = np.ones((1, ids.shape[1] + 1), dtype=np.int64)
    position = np.array([[ids.shape[1]]], dtype=np.int64)
    times: dict[str, list[float]] = {name: [] for name in generators}
    for round_index in range(rounds):
        for name in sorted(generators, reverse=round_index % 2 == 1):
            backend = generators[name].backend
            for _ in range(20):
                started = time.perf_counter()
                backend.forward(token, mask, position, state[name])
                times[name].append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    main()
