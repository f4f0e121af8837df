"""Class colours for label maps and overlays."""

from __future__ import annotations

import colorsys

__all__ = ["default_palette"]


def default_palette(num_classes: int) -> list[list[int]]:
    """`num_classes` well-separated RGB colours (golden-ratio hue steps), as [r, g, b] ints."""
    colours = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.7
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
        colours.append([int(round(255 * r)), int(round(255 * g)), int(round(255 * b))])
    return colours
