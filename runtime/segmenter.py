"""Images in, label maps out: letterbox, batch, run, crop, resize back."""

from __future__ import annotations

import numpy as np

from .backends import ModelError, Runner
from .contract import INPUT, LABELS
from .postprocess import restore_labels
from .preprocess import letterbox

__all__ = ["Segmenter"]

_REQUIRED = ("input_size", "pad_value", "class_names", "palette")


class Segmenter:
    """Segments RGB images with an activated runner, using the graph's own metadata."""

    def __init__(self, runner: Runner) -> None:
        missing = [k for k in _REQUIRED if k not in runner.metadata]
        if missing:
            raise ModelError(f"{runner.path}: no ssprompt metadata ({', '.join(missing)}); export it with ssp-export")
        self.runner = runner
        self.input_size = int(runner.metadata["input_size"])
        self.pad_value = tuple(runner.metadata["pad_value"])
        self.class_names: list[str] = list(runner.metadata["class_names"])
        self.palette: list[list[int]] = runner.metadata["palette"]

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """
        Arguments:
          images: HxWx3 uint8 RGB images of any sizes (one batch).

        Returns:
          One HxW class-index map per image, at that image's size.
        """
        boxed = [letterbox(image, self.input_size, self.pad_value) for image in images]
        batch = np.stack([square for square, _ in boxed])  # (B, S, S, 3)
        labels = self.runner.infer({INPUT: batch}, [LABELS])[LABELS]  # (B, S, S)
        return [restore_labels(labels[i], placement) for i, (_, placement) in enumerate(boxed)]
