"""Tiles cover the image, and blending reassembles it exactly where tiles agree and smoothly where not."""

import pytest
import torch

from reflection_separation.tiling import blend_tiles, tile_boxes, tile_starts


def test_tile_starts_cover_with_overlap():
    assert tile_starts(100, 128, 32) == [0]
    starts = tile_starts(300, 128, 32)
    assert starts[0] == 0 and starts[-1] == 300 - 128
    for a, b in zip(starts, starts[1:]):
        assert a + 128 - b >= 32  # at least the requested overlap
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_starts(300, 128, 128)


def test_blending_tiles_of_one_image_reassembles_it_exactly():
    image = torch.rand(3, 150, 230)
    tile, overlap = 64, 16
    boxes = tile_boxes(150, 230, tile, overlap)
    tiles = [image[:, t:b, l:r] for t, l, b, r in boxes]
    torch.testing.assert_close(blend_tiles(tiles, 150, 230, tile, overlap), image, atol=1e-6, rtol=1e-6)


def test_seams_are_blended_linearly():
    # two tiles side by side: left all 0, right all 1, 16 pixels of overlap
    tile, overlap, width = 64, 16, 112
    boxes = tile_boxes(8, width, tile, overlap)
    assert [(l, r) for _, l, _, r in boxes] == [(0, 64), (48, 112)]
    out = blend_tiles([torch.zeros(1, 8, 64), torch.ones(1, 8, 64)], 8, width, tile, overlap)[0, 0]
    assert torch.all(out[:48] == 0) and torch.all(out[64:] == 1)
    seam = out[48:64]
    assert torch.all(seam[1:] > seam[:-1]) and 0 < seam[0] < 0.1 and 0.9 < seam[-1] < 1
