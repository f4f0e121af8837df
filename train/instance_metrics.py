"""Instance-level evaluation: panoptic quality (PQ / SQ / RQ) and COCO mask AP.

`ground_truth_segments` turns a class-label map and an instance-id map into one image's panoptic
segments. `PanopticQuality` scores predicted segments against them the way COCO's panopticapi
does (Kirillov et al. 2019); `MaskAP` scores scored instance masks of the thing classes with
pycocotools' COCOeval (iouType "segm"). Both accumulate over images and report fractions in 0..1.

Shapes: H x W an image, K predicted instances, C classes.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssprompt.runtime.coco import rle_encode

__all__ = ["Segments", "ground_truth_segments", "PanopticQuality", "MaskAP"]


@dataclass(frozen=True)
class Segments:
    """One image's panoptic segmentation: an id map and each segment's class.

    Attributes:
      ids (np.ndarray): (H, W) integer segment ids; 0 is void (no segment).
      classes (dict[int, int]): segment id -> class index in [0, C).
    """

    ids: np.ndarray
    classes: dict[int, int]


def ground_truth_segments(labels: np.ndarray, instances: np.ndarray, things: Sequence[int], void: int) -> Segments:
    """The panoptic ground truth of one image from its label map and instance-id map.

    Each stuff class (one not in `things`) present in `labels` is one segment: its pixels. Each
    instance id > 0 is one segment of the thing class most common among its thing-labelled pixels
    (ties go to the lower class index); its pixels are its thing-labelled ones. Instance pixels
    labelled `void` are void and instance pixels labelled with a stuff class stay with that stuff
    segment (so stuff pixels carrying an instance id, such as Cityscapes' raw label ids, are
    harmless); an instance left with no pixels is dropped. Thing-labelled pixels without an
    instance id (0), such as Cityscapes' group regions once mapped to 0, are void.

    Segment ids are 1, 2, 3...: the stuff classes in class order, then the instances in
    ascending instance-id order.

    Arguments:
      labels (np.ndarray): (H, W) integer class indices, or `void`.
      instances (np.ndarray): (H, W) integer instance ids; values <= 0 are no instance.
      things (Sequence[int]): the thing classes.
      void (int): the label of pixels that belong to no class.

    Returns:
      Segments: ids (H, W) int32, and the class of each segment id.
    """
    labels = np.asarray(labels)
    instances = np.asarray(instances)
    if labels.ndim != 2 or labels.shape != instances.shape:
        raise ValueError(f"labels {labels.shape} and instances {instances.shape} must be the same (H, W) shape")
    for name, array in (("labels", labels), ("instances", instances)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got {array.dtype}")

    labelled = labels != void
    is_thing = labelled & np.isin(labels, np.asarray(list(things), dtype=labels.dtype))
    ids = np.zeros(labels.shape, dtype=np.int32)
    classes: dict[int, int] = {}

    stuff = labelled & ~is_thing
    stuff_classes, stuff_index = np.unique(labels[stuff], return_inverse=True)
    ids[stuff] = 1 + stuff_index
    classes.update({1 + i: int(c) for i, c in enumerate(stuff_classes)})
    first_instance = 1 + len(stuff_classes)

    owned = is_thing & (instances > 0)
    instance_ids, instance_index = np.unique(instances[owned], return_inverse=True)
    ids[owned] = first_instance + instance_index
    # Majority class per instance from a (instance, thing class) pixel-count table.
    thing_classes, class_index = np.unique(labels[owned], return_inverse=True)
    counts = np.bincount(instance_index * len(thing_classes) + class_index,
                         minlength=len(instance_ids) * len(thing_classes))
    if len(instance_ids):
        majority = thing_classes[counts.reshape(len(instance_ids), len(thing_classes)).argmax(1)]
        classes.update({first_instance + i: int(c) for i, c in enumerate(majority)})
    return Segments(ids, classes)


def _check_ids(segments: Segments, role: str) -> np.ndarray:
    ids = np.asarray(segments.ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{role} ids must be an (H, W) integer array, got shape {ids.shape} of {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{role} ids must be >= 0 (0 is void), found {int(ids.min())}")
    return ids


def _classes_of(segment_ids: np.ndarray, segments: Segments, num_classes: int, role: str) -> np.ndarray:
    """Class index of each segment id, checked to be in [0, C)."""
    out = np.empty(len(segment_ids), dtype=np.int64)
    for i, segment in enumerate(segment_ids.tolist()):
        if segment not in segments.classes:
            raise ValueError(f"{role} segment id {segment} has no class in its classes")
        out[i] = int(segments.classes[segment])
        if not 0 <= out[i] < num_classes:
            raise ValueError(f"{role} segment id {segment} has class {out[i]}, outside 0..{num_classes - 1}")
    return out


def _check_things(things: Sequence[int], num_classes: int) -> list[int]:
    things = sorted({int(t) for t in things})
    if any(not 0 <= t < num_classes for t in things):
        raise ValueError(f"thing classes {things} must lie in 0..{num_classes - 1}")
    return things


class PanopticQuality:
    """Accumulates PQ / SQ / RQ over images, the standard definition (Kirillov et al. 2019, as COCO's
    panopticapi computes it).

    A predicted and a ground-truth segment of the same class match when their IoU > 0.5, the
    predicted pixels on ground-truth void left out of the union. Unmatched ground-truth segments
    are false negatives; unmatched predicted segments are false positives unless more than half
    of their pixels lie on ground-truth void. Predicted id 0 is a void prediction, not a segment.
    """

    def __init__(self, class_names: Sequence[str], things: Sequence[int]) -> None:
        self.class_names = list(class_names)
        self.things = _check_things(things, len(self.class_names))
        num_classes = len(self.class_names)
        self.iou_sum = np.zeros(num_classes, dtype=np.float64)
        self.tp = np.zeros(num_classes, dtype=np.int64)
        self.fp = np.zeros(num_classes, dtype=np.int64)
        self.fn = np.zeros(num_classes, dtype=np.int64)

    def update(self, truth: Segments, prediction: Segments) -> None:
        """Add one image.

        Arguments:
          truth (Segments): ground truth, ids (H, W).
          prediction (Segments): predicted segments, ids (H, W).
        """
        truth_ids, predicted_ids = _check_ids(truth, "truth"), _check_ids(prediction, "prediction")
        if truth_ids.shape != predicted_ids.shape:
            raise ValueError(f"truth shape {truth_ids.shape} and prediction shape {predicted_ids.shape} differ")
        num_classes = len(self.class_names)
        gt_ids, gt_index, gt_area = np.unique(truth_ids.ravel(), return_inverse=True, return_counts=True)
        pr_ids, pr_index, pr_area = np.unique(predicted_ids.ravel(), return_inverse=True, return_counts=True)
        # overlap[g, p]: pixels with ground-truth id gt_ids[g] and predicted id pr_ids[p].
        overlap = np.bincount(gt_index.astype(np.int64) * len(pr_ids) + pr_index,
                              minlength=len(gt_ids) * len(pr_ids)).reshape(len(gt_ids), len(pr_ids))
        on_void = overlap[0] if gt_ids[0] == 0 else np.zeros(len(pr_ids), dtype=np.int64)

        gt_keep, pr_keep = gt_ids != 0, pr_ids != 0
        gt_classes = _classes_of(gt_ids[gt_keep], truth, num_classes, "truth")
        pr_classes = _classes_of(pr_ids[pr_keep], prediction, num_classes, "prediction")
        gt_area, pr_area, on_void = gt_area[gt_keep], pr_area[pr_keep], on_void[pr_keep]
        intersection = overlap[np.ix_(gt_keep, pr_keep)]

        union = gt_area[:, None] + (pr_area - on_void)[None, :] - intersection
        # 2 * I > U is IoU > 0.5 without rounding; IoU > 0.5 makes matches one-to-one.
        matched = (gt_classes[:, None] == pr_classes[None, :]) & (2 * intersection > union)
        rows, cols = np.nonzero(matched)
        np.add.at(self.tp, gt_classes[rows], 1)
        np.add.at(self.iou_sum, gt_classes[rows], intersection[rows, cols] / union[rows, cols])
        np.add.at(self.fn, gt_classes[~matched.any(1)], 1)
        counted = ~matched.any(0) & (2 * on_void <= pr_area)
        np.add.at(self.fp, pr_classes[counted], 1)

    def compute(self) -> dict:
        """PQ, SQ and RQ averaged over the classes seen (TP + FP + FN > 0), and per class.

        Returns:
          dict: "pq", "sq", "rq" (None if no class was seen), "pq_things", "pq_stuff" (None if
            no thing / stuff class was seen), "per_class": name -> {"pq", "sq", "rq", "tp",
            "fp", "fn"}, or None for a class absent from ground truth and predictions.
        """
        per_class: dict[str, dict | None] = {}
        seen = []
        for c, name in enumerate(self.class_names):
            tp, fp, fn = int(self.tp[c]), int(self.fp[c]), int(self.fn[c])
            if tp + fp + fn == 0:
                per_class[name] = None
                continue
            seen.append(c)
            denominator = tp + 0.5 * fp + 0.5 * fn
            per_class[name] = {"pq": float(self.iou_sum[c] / denominator),
                               "sq": float(self.iou_sum[c] / tp) if tp else 0.0,
                               "rq": tp / denominator, "tp": tp, "fp": fp, "fn": fn}

        def mean(key: str, classes: list[int]) -> float | None:
            values = [per_class[self.class_names[c]][key] for c in classes]
            return float(np.mean(values)) if values else None

        things = set(self.things)
        return {"pq": mean("pq", seen), "sq": mean("sq", seen), "rq": mean("rq", seen),
                "pq_things": mean("pq", [c for c in seen if c in things]),
                "pq_stuff": mean("pq", [c for c in seen if c not in things]),
                "per_class": per_class}


class MaskAP:
    """COCO mask AP (pycocotools COCOeval, iouType "segm") over the thing classes.

    Category ids given to COCO are class index + 1 (COCO's start at 1); image ids are 1..n in
    update order.
    """

    def __init__(self, class_names: Sequence[str], things: Sequence[int]) -> None:
        self.class_names = list(class_names)
        self.things = _check_things(things, len(self.class_names))
        self._images: list[dict] = []
        self._truths: list[dict] = []
        self._detections: list[dict] = []

    def update(self, truth: Segments, masks: np.ndarray, classes: Sequence[int], scores: Sequence[float]) -> None:
        """Add one image: its ground-truth thing segments and the predicted instances.

        Arguments:
          truth (Segments): ground truth, ids (H, W); its thing-class segments are the COCO
            ground truth (iscrowd 0, area its pixel count).
          masks (np.ndarray): (K, H, W) bool predicted instance masks; K may be 0.
          classes (Sequence[int]): (K,) thing class index of each mask.
          scores (Sequence[float]): (K,) confidence of each mask.
        """
        ids = _check_ids(truth, "truth")
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != ids.shape:
            raise ValueError(f"masks shape {masks.shape} must be (K, H, W) with truth shape {ids.shape} as (H, W)")
        masks = masks.astype(bool)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if not len(masks) == len(classes) == len(scores):
            raise ValueError(f"{len(masks)} masks, {len(classes)} classes and {len(scores)} scores must be as many")
        if not np.all(np.isfinite(scores)):
            raise ValueError("scores must be finite")
        if not np.all(np.isin(classes, self.things)):
            bad = sorted(set(classes.tolist()) - set(self.things))
            raise ValueError(f"predicted classes {bad} are not thing classes {self.things}")

        image_id = len(self._images) + 1
        height, width = ids.shape
        self._images.append({"id": image_id, "height": height, "width": width})
        segment_ids, areas = np.unique(ids[ids != 0], return_counts=True)
        segment_classes = _classes_of(segment_ids, truth, len(self.class_names), "truth")
        for segment, area, cls in zip(segment_ids.tolist(), areas.tolist(), segment_classes.tolist()):
            if cls not in self.things:
                continue
            rle = rle_encode(ids == segment)
            self._truths.append({"id": len(self._truths) + 1, "image_id": image_id, "category_id": cls + 1,
                                 "segmentation": rle, "area": float(area), "iscrowd": 0,
                                 "bbox": mask_utils.toBbox(rle).tolist()})
        for mask, cls, score in zip(masks, classes.tolist(), scores.tolist()):
            self._detections.append({"image_id": image_id, "category_id": cls + 1,
                                     "segmentation": rle_encode(mask), "score": score})

    def compute(self) -> dict:
        """COCO AP over IoU 0.50:0.95, at 0.50 and 0.75 (area all, 100 detections per image).

        Returns:
          dict: "ap", "ap50", "ap75" fractions in 0..1, and "per_class": thing class name -> AP
            over IoU 0.50:0.95, None for a class without ground truth. All None when no image
            has thing ground truth.
        """
        per_class: dict[str, float | None] = {self.class_names[c]: None for c in self.things}
        if not self._truths:
            return {"ap": None, "ap50": None, "ap75": None, "per_class": per_class}
        categories = [{"id": c + 1, "name": self.class_names[c]} for c in self.things]
        with contextlib.redirect_stdout(io.StringIO()):
            truth = COCO()
            truth.dataset = {"images": list(self._images), "categories": categories,
                             "annotations": [dict(a) for a in self._truths]}
            truth.createIndex()
            if self._detections:
                # loadRes writes area / bbox / id into the dicts it gets: hand it copies.
                detected = truth.loadRes([dict(d) for d in self._detections])
            else:  # loadRes refuses an empty list
                detected = COCO()
                detected.dataset = {"images": list(self._images), "categories": categories, "annotations": []}
                detected.createIndex()
            evaluation = COCOeval(truth, detected, "segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()

        # precision: (T IoU thresholds, R recall points, K categories, A area ranges, M max-dets).
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        for k, category in enumerate(evaluation.params.catIds):
            values = precision[:, :, k]
            values = values[values > -1]
            per_class[self.class_names[category - 1]] = float(values.mean()) if values.size else None

        def stat(value: float) -> float | None:
            return None if value == -1 else float(value)

        return {"ap": stat(evaluation.stats[0]), "ap50": stat(evaluation.stats[1]),
                "ap75": stat(evaluation.stats[2]), "per_class": per_class}
