"""Instance and panoptic segmentation from the graph's per-prompt outputs, in numpy (no torch).

Every prompt n of the graph gives mask logits m_n over the square input, an IoU estimate q_n and
class probabilities p_n. A prompt's class is its most probable one, c_n = argmax p_n, and its
score s_n = p_n[c_n] * clip(q_n, 0, 1): how sure the classifier is, times how good SAM thinks
the mask is.

- Instances: prompts whose class is a thing, ranked by score, near-duplicate masks removed by
  mask-IoU NMS (a grid puts several prompts on one object), the best `top_k` kept.
- Panoptic (Mask2Former's panoptic inference): prompts scoring above `object_threshold` claim the
  pixels where s_n * sigmoid(m_n) is highest; a prompt keeps a segment (the claimed pixels inside
  its own mask, m_n > mask_threshold) only where it claimed at least `overlap_threshold` as many
  pixels as its own mask holds; the prompts of one stuff class merge into one segment. Pixels nobody keeps are void (segment id 0).

Defaults: SAM's mask threshold and NMS IoU, Mask2Former's top-K and overlap threshold. Mask2Former's
object threshold (0.8) is not the default: its scores are class probabilities beside a trained
"no object" class, and these scores have none (every prompt is some class), so 0.8 leaves only
the most confident stuff prompts. At 0 every prompt competes for pixels, the same prompts the
semantic map sums over, and the overlap threshold drops the prompts that win too little of
their own mask.

Masks are resized as SAM does: the logits (bilinear) to the image's size over the image's part of
the square input, then thresholded.

Shapes: N prompts, M the mask side, S the square input's side, C classes, K instances kept,
H x W the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import OptionError
from .preprocess import Letterbox

__all__ = ["InstanceOptions", "PanopticOptions", "Instances", "Panoptic", "prompt_classes", "restore_mask_logits",
           "mask_nms", "instances_from_prompts", "panoptic_from_prompts"]


@dataclass(frozen=True)
class InstanceOptions:
    mask_threshold: float = 0.0  # a pixel is in a mask where its logit exceeds this (SAM's mask_threshold)
    score_threshold: float = 0.0  # instances scoring at or below it are dropped (0: all, as COCO AP ranks them)
    nms_iou: float = 0.7  # of two masks overlapping by more, the lower-scoring goes (SAM's automatic mask generator)
    top_k: int = 100  # instances kept an image (Mask2Former's test_topk_per_image; COCO's maxDets)

    def __post_init__(self) -> None:
        if not 0.0 <= self.nms_iou <= 1.0 or self.top_k < 1 or self.score_threshold < 0:
            raise OptionError(f"instance options out of range: nms_iou {self.nms_iou} (0..1), top_k {self.top_k} (>= 1), "
                              f"score_threshold {self.score_threshold} (>= 0)")


@dataclass(frozen=True)
class PanopticOptions:
    object_threshold: float = 0.0  # prompts scoring at or below it claim no pixels (0: all; see above)
    overlap_threshold: float = 0.8  # share of its own mask a prompt must win to keep a segment (Mask2Former's)
    mask_threshold: float = 0.0  # a prompt's own mask: logits above it (sigmoid above 0.5, as Mask2Former's)

    def __post_init__(self) -> None:
        if not (0.0 <= self.object_threshold <= 1.0 and 0.0 <= self.overlap_threshold <= 1.0):
            raise OptionError(f"panoptic thresholds must lie in 0..1, got object {self.object_threshold}, "
                              f"overlap {self.overlap_threshold}")


@dataclass
class Instances:
    masks: np.ndarray  # (K, H, W) bool, at the image's size
    classes: np.ndarray  # (K,) int64 class indices (things only)
    scores: np.ndarray  # (K,) float32, descending
    prompts: np.ndarray  # (K,) int64: the prompt each instance came from


@dataclass
class Panoptic:
    ids: np.ndarray  # (H, W) int32 segment ids; 0 void
    segments: list[dict]  # one a segment: id, class, thing (bool), score, area (pixels)


def prompt_classes(iou: np.ndarray, class_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's class and score.

    Arguments:
      iou (np.ndarray): (N,) IoU estimates.
      class_probs (np.ndarray): (N, C) class probabilities.

    Returns:
      (np.ndarray): (N,) int64 class c_n = argmax p_n.
      (np.ndarray): (N,) float32 score p_n[c_n] * clip(q_n, 0, 1).
    """
    classes = class_probs.argmax(axis=-1).astype(np.int64)
    best = np.take_along_axis(class_probs, classes[:, None], axis=-1)[:, 0]
    return classes, (best * np.clip(iou, 0.0, 1.0)).astype(np.float32)


def restore_mask_logits(logits: np.ndarray, placement: Letterbox) -> np.ndarray:
    """One prompt's mask logits over the square input → over the original image (bilinear).

    Arguments:
      logits (np.ndarray): (M, M) mask logits; they cover the S x S input.
      placement (Letterbox): where the image sat in the square.

    Returns:
      (np.ndarray): (H, W) float32 logits at the image's size.
    """
    scale = logits.shape[0] / placement.size  # mask cells per input pixel
    box = (0.0, 0.0, placement.width * scale, placement.height * scale)  # the image's part, in mask cells
    resized = Image.fromarray(np.ascontiguousarray(logits, dtype=np.float32), mode="F").resize(
        (placement.source_width, placement.source_height), Image.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.float32)


def _extent(placement: Letterbox, mask_size: int) -> tuple[int, int]:
    """Rows and columns of the M x M mask grid that the image covers (at least one)."""
    scale = mask_size / placement.size
    return max(1, int(np.ceil(placement.height * scale))), max(1, int(np.ceil(placement.width * scale)))


def mask_nms(masks: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression by mask IoU.

    Arguments:
      masks (np.ndarray): (K, P) bool flattened masks, best-scoring first.
      iou_threshold (float): a mask whose IoU with a kept, better one exceeds this is dropped.

    Returns:
      Indices of the kept masks, in their order.
    """
    flat = masks.astype(np.float32)
    overlap = flat @ flat.T  # (K, K) intersections
    area = np.diag(overlap)
    union = area[:, None] + area[None, :] - overlap
    iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    kept: list[int] = []
    for k in range(len(masks)):
        if all(iou[k, j] <= iou_threshold for j in kept):
            kept.append(k)
    return kept


def instances_from_prompts(mask_logits: np.ndarray, iou: np.ndarray, class_probs: np.ndarray, things: Sequence[int],
                           placement: Letterbox, options: InstanceOptions = InstanceOptions()) -> Instances:
    """One image's instances of thing classes.

    Arguments:
      mask_logits (np.ndarray): (N, M, M) per-prompt mask logits over the square input.
      iou (np.ndarray): (N,) IoU estimates.
      class_probs (np.ndarray): (N, C) class probabilities.
      things (Sequence[int]): the countable classes.
      placement (Letterbox): where the image sat in the square.

    Returns:
      (Instances): K <= top_k instances at the image's size, best first.
    """
    classes, scores = prompt_classes(iou, class_probs)
    rows, cols = _extent(placement, mask_logits.shape[-1])
    binary = mask_logits[:, :rows, :cols] > options.mask_threshold  # (N, rows, cols): NMS at the mask grid's resolution
    thing = np.isin(classes, np.asarray(list(things), dtype=np.int64))
    order = np.argsort(-scores, kind="stable")
    candidates = [int(n) for n in order if thing[n] and scores[n] > options.score_threshold and binary[n].any()]
    flat = binary[candidates].reshape(len(candidates), rows * cols)  # (K, P)
    kept = [candidates[k] for k in mask_nms(flat, options.nms_iou)]
    masks, chosen = [], []
    for n in kept:
        mask = restore_mask_logits(mask_logits[n], placement) > options.mask_threshold
        if mask.any():  # a sliver of the grid can vanish at the image's size
            masks.append(mask)
            chosen.append(n)
        if len(chosen) == options.top_k:
            break
    chosen_idx = np.asarray(chosen, dtype=np.int64)
    shape = (placement.source_height, placement.source_width)
    return Instances(masks=np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool),
                     classes=classes[chosen_idx], scores=scores[chosen_idx], prompts=chosen_idx)


def panoptic_from_prompts(mask_logits: np.ndarray, iou: np.ndarray, class_probs: np.ndarray, things: Sequence[int],
                          placement: Letterbox, options: PanopticOptions = PanopticOptions()) -> Panoptic:
    """One image's panoptic segmentation: thing instances and stuff regions, no pixel in two segments.

    Arguments: as `instances_from_prompts`.

    Returns:
      (Panoptic): segment ids at the image's size (0 void) and the segments, ids 1, 2, ... in score order.
    """
    classes, scores = prompt_classes(iou, class_probs)
    shape = (placement.source_height, placement.source_width)
    order = [int(n) for n in np.argsort(-scores, kind="stable") if scores[n] > options.object_threshold]
    best = np.zeros(shape, dtype=np.float32)  # the highest score * sigmoid so far, a pixel
    owner = np.full(shape, -1, dtype=np.int64)  # the index into `order` that has it
    own_masks = []
    for k, n in enumerate(order):
        logits = restore_mask_logits(mask_logits[n], placement)  # (H, W)
        weighted = scores[n] * 0.5 * (1.0 + np.tanh(0.5 * logits))  # score * sigmoid, without exp's overflow
        wins = weighted > best
        best[wins], owner[wins] = weighted[wins], k
        own_masks.append(logits > options.mask_threshold)
    ids = np.zeros(shape, dtype=np.int32)
    segments: list[dict] = []
    stuff_segment: dict[int, dict] = {}
    thing_set = {int(c) for c in things}
    for k, n in enumerate(order):
        own = own_masks[k]
        claimed = owner == k
        won = claimed & own
        area, original = int(won.sum()), int(own.sum())
        # Mask2Former's test: the pixels it claimed (whatever its own mask says there) over its own mask.
        if area == 0 or original == 0 or int(claimed.sum()) / original < options.overlap_threshold:
            continue
        cls = int(classes[n])
        if cls not in thing_set and cls in stuff_segment:
            segment = stuff_segment[cls]
            segment["area"] += area
        else:
            segment = {"id": len(segments) + 1, "class": cls, "thing": cls in thing_set, "score": float(scores[n]),
                       "area": area}
            segments.append(segment)
            if cls not in thing_set:
                stuff_segment[cls] = segment
        ids[won] = segment["id"]
    return Panoptic(ids=ids, segments=segments)
