"""Host-side pre- and post-processing shared by training, export and the runtime (numpy + Pillow).

Shapes: H x W an image, S the square input's side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Letterbox", "letterbox", "resized_extent"]


def resized_extent(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size (H, W) of an image whose longer side is scaled to `long_side`, rounded as SAM does,
    and never below one pixel (a 10000 x 1 strip keeps one row)."""
    scale = long_side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits inside the square model input.

    The image is scaled so its longer side equals `size`, then placed at the top-left
    corner and padded to `size x size` (SAM's convention).
    """

    size: int  # side of the square model input
    height: int  # rows of the scaled image inside the square
    width: int  # columns of the scaled image inside the square
    source_height: int  # rows of the original image
    source_width: int  # columns of the original image


def letterbox(image: np.ndarray, size: int, pad_value: tuple[int, int, int] = (0, 0, 0)) -> tuple[np.ndarray, Letterbox]:
    """Scale an RGB image so its long side is `size` and pad it to a square (bottom and right).

    Arguments:
      image (np.ndarray): (H, W, 3) uint8 RGB.
      size (int): side of the square output.
      pad_value (tuple): RGB of the padding; ssprompt graphs record theirs in the metadata.

    Returns:
      (np.ndarray): size x size x 3 uint8, image top-left, `pad_value` elsewhere.
      (Letterbox): the placement, to crop outputs back.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    new_h, new_w = resized_extent(height, width, size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    square = np.empty((size, size, 3), dtype=np.uint8)
    square[...] = np.asarray(pad_value, dtype=np.uint8)
    square[:new_h, :new_w] = resized
    return square, Letterbox(size, new_h, new_w, height, width)
