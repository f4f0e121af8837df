"""Evaluation: the label maps the exported graph produces, scored against the labels (mIoU); and its
instances and panoptic segments, post-processed as the runtime does, scored as COCO does (mask AP, PQ).

A prediction takes the shipped path: the graph's head (`model.labels_from_semantic`: the semantic
map resized to the square input, then the most probable class), then the runtime's
post-processing (`runtime.postprocess.restore_labels`: the padding cropped, nearest resize to the
label's size). ssp-eval's mIoU is the mIoU of the label maps ssp-run writes; likewise its AP and PQ
score what `ssp-run --task instance|panoptic` writes (`runtime.instances`).

Shapes: C classes, H x W a label's size, S the square input's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ssprompt.runtime.instances import InstanceOptions, PanopticOptions, instances_from_prompts, panoptic_from_prompts
from ssprompt.runtime.postprocess import restore_labels
from ssprompt.runtime.preprocess import Letterbox

from .features import Features
from .model import SSPrompt, labels_from_semantic

__all__ = ["evaluate", "InstanceScoring", "confusion_matrix", "metrics_from_confusion"]


@dataclass(frozen=True)
class InstanceScoring:
    """What scoring instances and panoptic segments needs besides the items (see `evaluate`)."""

    instance_map: Callable[[int], np.ndarray]  # item index -> (H, W) instance ids at its label's size, 0 none; read as needed
    things: Sequence[int]  # the countable classes
    instance_options: InstanceOptions = InstanceOptions()
    panoptic_options: PanopticOptions = PanopticOptions()


@torch.no_grad()
def evaluate(model: SSPrompt, items: Sequence[Features], num_classes: int, void: int, batch_size: int = 4,
             progress: bool = False, instances: InstanceScoring | None = None) -> dict:
    """mIoU over the classes that occur in labels or predictions; per-class IoU (None when absent).

    With `instances`, from the same forward passes also COCO mask AP of the thing instances and PQ / SQ / RQ
    of the panoptic segments: ap, ap50, ap75, pq, sq, rq, pq_things, pq_stuff (fractions; None where
    nothing counts), per_class_ap and per_class_pq.
    """
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    scores = _InstanceScores(model, instances, void) if instances is not None else None
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", disable=not progress):
        batch = items[start:start + batch_size]
        out = model(torch.stack([f.sam for f in batch]), torch.stack([f.clip for f in batch]))
        squares = labels_from_semantic(out.semantic, model.image_size)[0].cpu().numpy()  # (B, S, S)
        for square, feats in zip(squares, batch):
            truth = feats.label.cpu().numpy()
            placement = Letterbox(model.image_size, feats.extent[0], feats.extent[1], *truth.shape)
            confusion += confusion_matrix(truth, restore_labels(square, placement), num_classes, void)
        if scores is not None:
            scores.update(out, batch, start)
    metrics = metrics_from_confusion(confusion, model.class_names)
    return {**metrics, **scores.result()} if scores is not None else metrics


class _InstanceScores:
    """Mask AP and PQ accumulated over batches of the model's outputs, post-processed as the runtime does."""

    def __init__(self, model: SSPrompt, scoring: InstanceScoring, void: int) -> None:
        from .instance_metrics import MaskAP, PanopticQuality

        self.image_size, self.scoring, self.void = model.image_size, scoring, void
        self.ap = MaskAP(model.class_names, scoring.things)
        self.pq = PanopticQuality(model.class_names, scoring.things)

    def update(self, out, batch: Sequence[Features], start: int) -> None:
        """`out`: the model's Prediction for `batch`, the items from index `start`."""
        from .instance_metrics import Segments, ground_truth_segments

        scoring = self.scoring
        masks, iou = out.masks.float().cpu().numpy(), out.iou.float().cpu().numpy()  # (B, N, M, M), (B, N)
        probs = out.class_logits.float().softmax(dim=-1).cpu().numpy()  # (B, N, C): the graph's CLASS_PROBS
        for i, feats in enumerate(batch):
            labels = feats.label.cpu().numpy()
            truth = ground_truth_segments(labels, scoring.instance_map(start + i), scoring.things, self.void)
            placement = Letterbox(self.image_size, feats.extent[0], feats.extent[1], *labels.shape)
            found = instances_from_prompts(masks[i], iou[i], probs[i], scoring.things, placement, scoring.instance_options)
            self.ap.update(truth, found.masks, found.classes.tolist(), found.scores.tolist())
            panoptic = panoptic_from_prompts(masks[i], iou[i], probs[i], scoring.things, placement, scoring.panoptic_options)
            self.pq.update(truth, Segments(panoptic.ids, {s["id"]: s["class"] for s in panoptic.segments}))

    def result(self) -> dict:
        mask_ap, quality = self.ap.compute(), self.pq.compute()
        return {"ap": mask_ap["ap"], "ap50": mask_ap["ap50"], "ap75": mask_ap["ap75"], "pq": quality["pq"],
                "sq": quality["sq"], "rq": quality["rq"], "pq_things": quality["pq_things"], "pq_stuff": quality["pq_stuff"],
                "per_class_ap": mask_ap["per_class"], "per_class_pq": quality["per_class"]}


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
