"""Colours: class palettes, instance colours, and which classes an overlay leaves unpainted."""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np

__all__ = ["default_palette", "instance_colours", "unpainted_classes", "UNPAINTED_NAMES"]

_GOLDEN = 0.618033988749895  # hue step: any run of consecutive hues stays well spread around the wheel

# Class names that segmentation viewers leave as they are: painting them washes the whole picture in one colour.
UNPAINTED_NAMES = frozenset({"background", "void", "unlabeled", "unlabelled", "ignore", "other"})


def _golden_hues(count: int, value: float, alternate_value: float) -> list[list[int]]:
    colours = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, 0.75, value if i % 2 == 0 else alternate_value)
        colours.append([int(round(255 * r)), int(round(255 * g)), int(round(255 * b))])
    return colours


def default_palette(num_classes: int) -> list[list[int]]:
    """`num_classes` well-separated RGB colours (golden-ratio hue steps, alternately darker), as [r, g, b] ints."""
    return _golden_hues(num_classes, 0.95, 0.7)


def instance_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct colours for instances: golden-ratio hue steps, all bright."""
    return np.asarray(_golden_hues(count, 0.95, 0.95), dtype=np.uint8).reshape(count, 3)


def unpainted_classes(class_names: Sequence[str]) -> frozenset[int]:
    """Indices of the classes an overlay leaves unpainted (background, void and the like; see UNPAINTED_NAMES)."""
    return frozenset(i for i, name in enumerate(class_names) if name.strip().lower() in UNPAINTED_NAMES)
