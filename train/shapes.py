"""The shapes the generated datasets draw: a disc, square or triangle filling a box, and the ring around a mask.

Shared by the plain synthetic dataset (train/synthetic.py) and the miniature world (train/world.py).

Shapes: H x W an image.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPES", "dilate", "shape_mask"]

SHAPES: tuple[str, ...] = ("disc", "square", "triangle")  # disc/square: ellipses and rectangles


def shape_mask(shape: str, x0: int, y0: int, box_w: int, box_h: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of a shape filling the box (x0, y0, box_w, box_h); yy, xx are (H, W) pixel centres."""
    cx, cy = x0 + box_w / 2.0, y0 + box_h / 2.0
    if shape == "disc":  # an ellipse inscribed in the box
        return ((xx - cx) / (box_w / 2.0)) ** 2 + ((yy - cy) / (box_h / 2.0)) ** 2 <= 1.0
    inside_box = (xx >= x0) & (xx < x0 + box_w) & (yy >= y0) & (yy < y0 + box_h)
    if shape == "square":
        return inside_box
    # Upward triangle: apex at the top centre, base along the bottom of the box.
    return inside_box & (np.abs(xx - cx) <= (yy - y0) * (box_w / 2.0) / box_h)


def dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of an (H, W) bool mask."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + height, dx : dx + width]
    return out
