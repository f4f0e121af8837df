"""Images in, label maps out: letterbox, batch, run, crop, resize back.

Shapes: B images a batch, H x W an image, S the square input's side.
"""

from __future__ import annotations

import numpy as np

from .backends import ModelError, Runner
from .contract import INPUT, LABELS, GraphMetadata
from .postprocess import restore_labels
from .preprocess import letterbox

__all__ = ["Segmenter", "check_metadata"]


def check_metadata(runner: Runner) -> GraphMetadata:
    """The graph's metadata (checked when the runner decoded it), or a ModelError for a model without it."""
    if runner.metadata is None:
        raise ModelError(f"{runner.path}: no ssprompt metadata; export it with ssp-export")
    return runner.metadata


class Segmenter:
    """Segments RGB images with an activated runner, using the graph's own metadata."""

    def __init__(self, runner: Runner) -> None:
        meta = check_metadata(runner)
        self.runner = runner
        self.input_size = meta.input_size
        self.pad_value = tuple(meta.pad_value)
        self.class_names: list[str] = list(meta.class_names)
        self.palette: list[list[int]] = meta.palette

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """
        Arguments:
          images: (H, W, 3) uint8 RGB images of any sizes (one batch).

        Returns:
          One (H, W) class-index map per image, at that image's size.
        """
        boxed = [letterbox(image, self.input_size, self.pad_value) for image in images]
        batch = np.stack([square for square, _ in boxed])  # (B, S, S, 3)
        labels = self.runner.infer({INPUT: batch}, [LABELS])[LABELS]  # (B, S, S)
        return [restore_labels(labels[i], placement) for i, (_, placement) in enumerate(boxed)]
