"""Grid <-> token canvas. One definition used by the builder, loader, evaluator and benches.

Tokens (`dataset/tokens.py`): PAD 0, EOS 1, colour c (0-9) -> c + 2. A grid of h x w is written at the top-left
(or at a translation offset) of a side x side canvas; EOS marks the row below and the
column right of the grid where they fit, so the model can predict the answer's size.
"""
from __future__ import annotations

import numpy as np

from .tokens import COLOUR_OFFSET, EOS_ID, IGNORE_LABEL_ID, NUM_COLOURS, PAD_ID, VOCAB_SIZE  # noqa: F401 (re-exported)


def encode_grid(grid: np.ndarray, side: int, offset: tuple[int, int] = (0, 0), out: np.ndarray | None = None) -> np.ndarray:
    """Write `grid` (h x w, values 0-9) into a flat canvas of side*side tokens."""
    h, w = grid.shape
    r0, c0 = offset
    if r0 + h > side or c0 + w > side:
        raise ValueError(f"grid {h}x{w} at offset {offset} does not fit a {side}x{side} canvas")
    canvas = np.zeros((side, side), dtype=np.int64) if out is None else out.reshape(side, side)
    if out is not None:
        canvas[:] = PAD_ID
    canvas[r0:r0 + h, c0:c0 + w] = grid + COLOUR_OFFSET
    if r0 + h < side:
        canvas[r0 + h, c0:min(c0 + w + 1, side)] = EOS_ID
    if c0 + w < side:
        canvas[r0:min(r0 + h + 1, side), c0 + w] = EOS_ID
    return canvas.reshape(-1)


def crop_sizes(canvases: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The EOS-boundary crop of N flat canvases [N, side*side]: (h, w) of the largest top-left
    rectangle of colour tokens, both 0 where the top-left cell is no colour."""
    canvases = np.asarray(canvases)
    n = canvases.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = canvases.reshape(n, side, side)
    is_colour = (c >= COLOUR_OFFSET) & (c < COLOUR_OFFSET + NUM_COLOURS)
    # width of the leading run of colours in each row, then the narrowest so far going down
    run = np.where(is_colour.all(axis=2), side, np.argmin(is_colour, axis=2))
    width = np.minimum.accumulate(run, axis=1)
    area = width * np.arange(1, side + 1)
    h = np.argmax(area, axis=1) + 1
    w = width[np.arange(n), h - 1]
    h = np.where(w == 0, 0, h)
    return h.astype(np.int64), w.astype(np.int64)


def decode_grid(tokens: np.ndarray, side: int | None = None) -> np.ndarray | None:
    """Crop a predicted canvas at its EOS boundary (see `crop_sizes`). Returns the h x w grid of
    colours 0-9, or None when the top-left cell is no colour."""
    tokens = np.asarray(tokens)
    if side is None:
        side = int(round(np.sqrt(tokens.size)))
    (h,), (w,) = crop_sizes(tokens.reshape(1, -1), side)
    if w == 0:
        return None
    return (tokens.reshape(side, side)[:h, :w] - COLOUR_OFFSET).astype(np.uint8)
