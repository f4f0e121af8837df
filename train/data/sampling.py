"""The k-shot subset: which classes each image holds, and a seeded pick in which every class occurs k times.

Shapes: N samples, C classes.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .folder import DataError, SegmentationFolder
from .reading import read_label

__all__ = ["class_presence", "sample_k_shot"]


def class_presence(folder: SegmentationFolder, progress: bool = True) -> np.ndarray:
    """Which classes each sample's label contains; validates every label once.

    Arguments:
        folder: an opened folder with N samples and C classes.
        progress: show a tqdm bar ("scan labels").

    Returns:
        (N, C) bool array, True where class c occurs in sample n.
    """
    num_classes = len(folder.class_names)
    presence = np.zeros((len(folder.samples), num_classes), dtype=bool)
    bar = tqdm(folder.samples, desc="scan labels", unit="img", disable=not progress, leave=False)
    for row, sample in enumerate(bar):
        label = read_label(sample, num_classes, folder.void)
        presence[row] = np.bincount(label.ravel(), minlength=256)[:num_classes] > 0
    return presence


def sample_k_shot(
    folder: SegmentationFolder, k: int, seed: int = 0, presence: np.ndarray | None = None
) -> list[int]:
    """Pick a few-shot subset in which every class occurs in at least k images.

    For each class in index order, images containing it are drawn in a seeded
    random order until k chosen images contain it (images chosen for earlier
    classes count).

    Arguments:
        folder: an opened folder with N samples and C classes.
        k: shots per class, >= 1.
        seed: random seed; the same seed gives the same subset.
        presence: (N, C) bool from :func:`class_presence`; computed when None.

    Returns:
        Sorted sample indices of the subset.

    Raises:
        DataError: k < 1, or a class occurs in fewer than k images.
    """
    if k < 1:
        raise DataError(
            f"{folder.location}: --shots {k} is invalid; need at least 1 image per class"
        )
    if presence is None:
        presence = class_presence(folder)
    presence = np.asarray(presence, dtype=bool)
    expected = (len(folder.samples), len(folder.class_names))
    if presence.shape != expected:
        raise ValueError(f"presence has shape {presence.shape}, expected {expected}")

    counts = presence.sum(axis=0)
    for c, name in enumerate(folder.class_names):
        if counts[c] < k:
            raise DataError(
                f"class {name!r} appears in {int(counts[c])} images of {folder.location}, "
                f"fewer than --shots {k}"
            )

    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(folder.samples), dtype=bool)
    for c in range(len(folder.class_names)):
        missing = k - int(presence[chosen, c].sum())
        if missing <= 0:
            continue
        candidates = rng.permutation(np.flatnonzero(presence[:, c] & ~chosen))
        chosen[candidates[:missing]] = True
    return [int(i) for i in np.flatnonzero(chosen)]
