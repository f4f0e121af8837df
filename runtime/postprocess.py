"""Post-processing of graph outputs on the host: crop the padding, restore the size, colour overlays.

Shapes: H x W an image, h x w its letterboxed extent, S the square input's side.
"""

from __future__ import annotations

from typing import Collection

import numpy as np

from .preprocess import Letterbox

__all__ = ["resize_label", "restore_labels", "colorize", "overlay"]


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (no new values are invented).

    Arguments:
        label: (h, w) array of class indices.
        size: target (H, W).

    Returns:
        (H, W) array, same dtype as ``label``.
    """
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D (H, W), got shape {label.shape}")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    src_h, src_w = label.shape
    # Sample at target pixel centres, as PIL's NEAREST does.
    rows = np.minimum(((np.arange(height) + 0.5) * (src_h / height)).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (src_w / width)).astype(np.int64), src_w - 1)
    return label[rows[:, None], cols[None, :]]


def restore_labels(labels: np.ndarray, placement: Letterbox) -> np.ndarray:
    """Labels over the square model input → labels over the original image.

    Arguments:
      labels (np.ndarray): (S, S) class indices of the letterboxed input.
      placement (Letterbox): where the image sat in the square.

    Returns:
      (np.ndarray): (H, W) class indices at the original image's size (nearest).
    """
    cropped = labels[: placement.height, : placement.width]  # drop the padding
    return resize_label(cropped, (placement.source_height, placement.source_width))


def colorize(labels: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) uint8 colours."""
    table = np.asarray(palette, dtype=np.uint8)
    return table[np.clip(labels, 0, len(table) - 1)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: list[list[int]], alpha: float = 0.5,
            unpainted: Collection[int] = ()) -> np.ndarray:
    """Blend the label colours over an (H, W, 3) uint8 image; pixels of the `unpainted` classes stay as they are."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    picture = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if unpainted:
        keep = np.isin(labels, list(unpainted))
        picture[keep] = image[keep]
    return picture
