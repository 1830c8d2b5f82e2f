"""`benchmarks/grid_distance.py --dither`: weights on a 4-bit grid land uniformly between its points,
within half a step of where they were; matrices not on a grid are left alone."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("safetensors")

from benchmarks.grid_distance import GRID_BLOCK, GRID_LEVELS, dithered, grid_distance, main, on_grid  # noqa: E402


def q4_1_weights(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """A matrix as a dequantized Q4_1 tensor: min + step * q per block of 32 along the columns."""
    low = rng.normal(-0.1, 0.02, size=(rows, columns // GRID_BLOCK, 1))
    step = rng.uniform(0.005, 0.02, size=(rows, columns // GRID_BLOCK, 1))
    levels = rng.integers(0, GRID_LEVELS, size=(rows, columns // GRID_BLOCK, GRID_BLOCK))
    levels[..., 0], levels[..., 1] = 0, GRID_LEVELS - 1  # both ends used, as Q4_1 does
    return (low + step * levels).reshape(rows, columns).astype(np.float32)


@pytest.mark.parametrize("rows,columns", [(1, 32), (7, 96), (64, 576)])
def test_dither_moves_every_weight_uniformly_off_the_grid_by_under_half_a_step(rows, columns):
    rng = np.random.default_rng(rows * columns)
    weight = q4_1_weights(rng, rows, columns)
    assert on_grid(weight)
    moved = dithered(weight, np.random.default_rng(0))
    distance = grid_distance(weight, moved)
    blocks = weight.reshape(rows, -1, GRID_BLOCK)
    step = ((blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / (GRID_LEVELS - 1)).reshape(
        rows, -1
    )
    shift = np.abs(moved - weight).reshape(rows, -1, GRID_BLOCK) / step[..., None]
    assert shift.max() <= 0.5 + 1e-4
    assert np.all(moved != weight)
    if distance.size >= 4096:  # uniform on [0, 0.5]: median 0.25
        assert abs(float(np.median(distance)) - 0.25) < 0.02
    np.testing.assert_array_equal(moved, dithered(weight, np.random.default_rng(0)))


def test_dither_writes_a_copy_and_leaves_off_grid_matrices(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(1)
    original = tmp_path / "hf"
    original.mkdir()
    (original / "config.json").write_text("{}", encoding="utf-8")
    weights = {
        "proj.weight": q4_1_weights(rng, 16, 64),
        "embed.weight": rng.normal(size=(16, 64)).astype(np.float32),  # not on a 4-bit grid
        "norm.weight": np.ones(64, np.float32),
    }
    save_file(weights, str(original / "model.safetensors"))
    target = tmp_path / "dithered"
    assert main([str(original), "--dither", str(target), "--seed", "3"]) == 0
    assert (target / "config.json").is_file()
    out = load_file(str(target / "model.safetensors"))
    assert not np.array_equal(out["proj.weight"], weights["proj.weight"])
    np.testing.assert_array_equal(out["embed.weight"], weights["embed.weight"])
    np.testing.assert_array_equal(out["norm.weight"], weights["norm.weight"])
    assert "proj.weight: median distance" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(original), "--dither", str(target)])  # never overwrites
