"""Overlapping tiles for photos larger than the model should see at once.

A tile is separated like a whole image (both branches of a tile together, so CLSA still pairs them), and the
tiles' outputs are blended back with weights that ramp linearly across each overlap, so seams fade instead
of showing as edges. Memory then depends on the tile size, not on the photo size.
"""

from __future__ import annotations

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"`tile_overlap` must be in [0, tile size), got {overlap} for tiles of {tile}.")
    stride = tile - overlap
    count = -(-(length - overlap) // stride)  # ceil
    starts = [min(i * stride, length - tile) for i in range(count)]
    return sorted(set(starts))


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(top, left, bottom, right)`` of every tile, row by row."""
    return [
        (top, left, min(top + tile, height), min(left + tile, width))
        for top in tile_starts(height, tile, overlap)
        for left in tile_starts(width, tile, overlap)
    ]


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """1 in the middle, rising linearly over ``before`` pixels and falling over ``after`` pixels."""
    weights = torch.ones(length)
    if before > 0:
        weights[:before] = torch.arange(1, before + 1) / (before + 1)
    if after > 0:
        weights[length - after :] = torch.minimum(weights[length - after :], torch.arange(after, 0, -1) / (after + 1))
    return weights


def _axis_ramps(starts: list[int], length: int, tile: int) -> list[torch.Tensor]:
    """Per tile along one axis: weights ramping over the overlap with the previous and the next tile."""
    ramps = []
    for i, start in enumerate(starts):
        end = min(start + tile, length)
        before = min(starts[i - 1] + tile, length) - start if i > 0 else 0
        after = end - starts[i + 1] if i + 1 < len(starts) else 0
        ramps.append(_ramp(end - start, max(before, 0), max(after, 0)))
    return ramps


def blend_tiles(tiles: list[torch.Tensor], height: int, width: int, tile: int, overlap: int) -> torch.Tensor:
    """Weighted average of the ``(C, h, w)`` tiles of :func:`tile_boxes` (same order) into ``(C, height, width)``."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    ramps_y, ramps_x = _axis_ramps(ys, height, tile), _axis_ramps(xs, width, tile)
    device = tiles[0].device
    total = torch.zeros(tiles[0].shape[0], height, width, dtype=torch.float32, device=device)
    weight_sum = torch.zeros(1, height, width, dtype=torch.float32, device=device)
    boxes = tile_boxes(height, width, tile, overlap)
    for index, (tile_image, (top, left, bottom, right)) in enumerate(zip(tiles, boxes)):
        weights = (ramps_y[index // len(xs)][:, None] * ramps_x[index % len(xs)][None, :]).to(device)
        total[:, top:bottom, left:right] += tile_image.float() * weights
        weight_sum[:, top:bottom, left:right] += weights
    return total / weight_sum
