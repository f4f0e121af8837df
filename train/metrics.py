"""Evaluation: the label maps the exported graph produces, scored against the labels (mIoU).

A prediction takes the shipped path: the graph's head (`model.labels_from_semantic`: the semantic
map resized to the square input, then the most probable class), then the runtime's
post-processing (`runtime.postprocess.restore_labels`: the padding cropped, nearest resize to the
label's size). ssp-eval's mIoU is the mIoU of the label maps ssp-run writes.

Shapes: C classes, H x W a label's size, S the square input's side.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ssprompt.runtime.postprocess import restore_labels
from ssprompt.runtime.preprocess import Letterbox

from .features import Features
from .model import SSPrompt, labels_from_semantic

__all__ = ["evaluate", "confusion_matrix", "metrics_from_confusion"]


@torch.no_grad()
def evaluate(model: SSPrompt, items: Sequence[Features], num_classes: int, void: int, batch_size: int = 4,
             progress: bool = False) -> dict:
    """mIoU over the classes that occur in labels or predictions; per-class IoU (None when absent)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", disable=not progress):
        batch = items[start:start + batch_size]
        semantic = model(torch.stack([f.sam for f in batch]), torch.stack([f.clip for f in batch])).semantic
        squares = labels_from_semantic(semantic, model.image_size)[0].cpu().numpy()  # (B, S, S)
        for square, feats in zip(squares, batch):
            truth = feats.label.cpu().numpy()
            placement = Letterbox(model.image_size, feats.extent[0], feats.extent[1], *truth.shape)
            confusion += confusion_matrix(truth, restore_labels(square, placement), num_classes, void)
    return metrics_from_confusion(confusion, model.class_names)


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int, void: int) -> np.ndarray:
    """(C, C) pixel counts, rows the true class, columns the predicted one; void pixels left out.

    Arguments:
      truth (np.ndarray): (H, W) class indices or `void`.
      prediction (np.ndarray): (H, W) class indices in [0, C).
    """
    valid = truth != void
    pairs = truth[valid].astype(np.int64) * num_classes + prediction[valid].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU over the classes present in labels or predictions, per-class IoU (None where absent), pixel accuracy."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    per_class = {name: (float(tp / u) if u > 0 else None) for name, tp, u in zip(class_names, true_positive, union)}
    present = [v for v in per_class.values() if v is not None]
    total = confusion.sum()
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "pixel_accuracy": float(true_positive.sum() / total) if total else 0.0,
        "pixels": int(total),
    }
