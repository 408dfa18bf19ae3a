"""``task=generate``'s grid.png: tiles drawn large enough to judge (small ones enlarged by whole pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rockgen.tasks.generate import write_grid


@pytest.mark.parametrize(("side", "cell"), [(32, 96), (40, 120), (96, 96), (300, 256)])
def test_generate_grid_enlarges_small_tiles_and_reduces_large_ones(tmp_path, side, cell):
    rng = np.random.default_rng(side)
    tiles = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(5)]
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(tmp_path / f"{i:06d}.png")
    grid = np.asarray(Image.open(write_grid(tmp_path, tmp_path.parent / "grid.png", count=5)))
    assert grid.shape == (2 * (cell + 2) + 2, 3 * (cell + 2) + 2, 3)  # 5 tiles: 3 columns, 2 rows, 2-px gaps
    first = grid[2 : 2 + cell, 2 : 2 + cell]
    if side < 96:  # whole-pixel blocks: every source pixel repeated cell / side times
        k = cell // side
        assert np.array_equal(first, tiles[0].repeat(k, 0).repeat(k, 1))
    elif side == cell:
        assert np.array_equal(first, tiles[0])
    assert (grid[2 + cell + 2 :, 2 + 2 * (cell + 2) :] == 255).all()  # the sixth cell stays empty (white)
