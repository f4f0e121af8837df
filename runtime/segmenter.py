"""Images in, label maps out: letterbox, batch, run, crop, resize back."""

from __future__ import annotations

import numpy as np

from .backends import ModelError, Runner
from .images import brief
from .contract import INPUT, LABELS
from .postprocess import restore_labels
from .preprocess import letterbox

__all__ = ["Segmenter", "check_metadata"]

_REQUIRED = ("input_size", "pad_value", "class_names", "palette")


def _colour(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value))


def check_metadata(runner: Runner) -> None:
    """What pre- and post-processing read from a graph's metadata, checked before any image is touched."""
    meta = runner.metadata
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{runner.path}: no ssprompt metadata ({', '.join(missing)}); export it with ssp-export")
    size, pad, names, palette = (meta[k] for k in _REQUIRED)
    if not isinstance(size, int) or size < 1:
        raise ModelError(f"{runner.path}: metadata input_size {brief(size)} is not a positive integer")
    if not _colour(pad):
        raise ModelError(f"{runner.path}: metadata pad_value {brief(pad)} is not three integers in 0..255")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{runner.path}: metadata class_names is not a list of names")
    if not isinstance(palette, list) or len(palette) != len(names) or not all(_colour(c) for c in palette):
        raise ModelError(f"{runner.path}: metadata palette needs {len(names)} colours of three integers in 0..255")


class Segmenter:
    """Segments RGB images with an activated runner, using the graph's own metadata."""

    def __init__(self, runner: Runner) -> None:
        check_metadata(runner)
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
