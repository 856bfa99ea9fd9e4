"""Control-map and compositing helpers: exact behaviour on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from portrait_core.core import imaging
from portrait_core.errors import InputImageError


def test_canny_finds_the_edge_of_a_square():
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    edges = np.asarray(imaging.canny_map(image).convert("L"))
    assert edges[16, 30] == 255 or edges[15, 30] == 255
    assert edges[32, 32] == 0 and edges[2, 2] == 0


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 16))
@settings(max_examples=25, deadline=None)
def test_color_grid_cells_are_flat_and_hold_the_cell_mean(cols, rows, cell):
    rng = np.random.default_rng(cols * 100 + rows * 10 + cell)
    pixels = rng.integers(0, 256, (rows * cell, cols * cell, 3), dtype=np.uint8)
    grid = np.asarray(imaging.color_grid_map(Image.fromarray(pixels), cell=cell)).astype(int)
    for r in range(rows):
        for c in range(cols):
            block = grid[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            assert (block == block[0, 0]).all()
            mean = pixels[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].reshape(-1, 3).mean(0)
            assert np.abs(block[0, 0] - mean).max() <= 1


def test_composite_keeps_far_pixels_and_takes_masked_ones():
    original = Image.new("RGB", (64, 64), (10, 20, 30))
    generated = Image.new("RGB", (64, 64), (200, 100, 50))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    out = np.asarray(imaging.feathered_composite(original, generated, mask, blur=4))
    assert tuple(out[32, 32]) == (200, 100, 50)
    assert tuple(out[5, 5]) == (10, 20, 30) and tuple(out[32, 10]) == (10, 20, 30)


def test_mask_of_the_wrong_size_is_named():
    with pytest.raises(InputImageError, match="mask is 32x32 but the image is 64x64"):
        imaging.check_mask(Image.new("RGB", (64, 64)), Image.new("L", (32, 32)))


def test_unsharp_upscale_scales_and_rejects_nonsense():
    assert imaging.unsharp_upscale(Image.new("RGB", (30, 20)), 1.5).size == (45, 30)
    with pytest.raises(InputImageError):
        imaging.unsharp_upscale(Image.new("RGB", (30, 20)), 0)
