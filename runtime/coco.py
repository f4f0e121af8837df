"""COCO formats of instance and panoptic results, and their overlays (numpy + pycocotools).

- Instances: COCO's results format, one record an instance: image_id, category_id, an RLE
  `segmentation` (pycocotools' encoder, counts as text so the file is JSON) and score.
- Panoptic: COCO's panoptic format, a PNG an image whose RGB encodes the segment id
  (id = R + 256 G + 256^2 B; 0 is void) and an annotation with its `segments_info`.
- Category ids are class index + 1: COCO's ids start at 1.

Shapes: H x W an image, K instances.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

from .instances import Instances, Panoptic
from .palette import instance_colours

__all__ = ["category_id", "categories", "rle_encode", "instance_records", "panoptic_png", "panoptic_record",
           "instance_overlay", "panoptic_overlay"]


def category_id(class_index: int) -> int:
    """COCO category id of a class index (COCO's ids start at 1)."""
    return int(class_index) + 1


def rle_encode(mask: np.ndarray) -> dict:
    """COCO's RLE of an (H, W) bool mask (pycocotools' encoder; counts as bytes)."""
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def categories(class_names: Sequence[str], things: Sequence[int], palette: Sequence[Sequence[int]]) -> list[dict]:
    """COCO categories (panoptic style, with isthing and color)."""
    thing_set = set(things)
    return [{"id": category_id(i), "name": name, "isthing": int(i in thing_set), "color": list(palette[i])}
            for i, name in enumerate(class_names)]


def instance_records(image_id: int, instances: Instances) -> list[dict]:
    """COCO results records of one image's instances.

    No `bbox`: given one, pycocotools' loadRes takes the box's area for the mask's, and a mask AP
    by object size would count the instance in the wrong range.
    """
    records = []
    for mask, cls, score in zip(instances.masks, instances.classes, instances.scores):
        rle = rle_encode(mask)
        rle["counts"] = rle["counts"].decode("ascii")
        records.append({"image_id": int(image_id), "category_id": category_id(cls), "segmentation": rle,
                        "score": float(score)})
    return records


def panoptic_png(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids → (H, W, 3) uint8 RGB, COCO's panoptic encoding."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def _bbox(mask: np.ndarray) -> list[int]:
    """[x, y, width, height] of a non-empty (H, W) bool mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def panoptic_record(image_id: int, file_name: str, panoptic: Panoptic) -> dict:
    """COCO panoptic annotation of one image: its PNG's name and the segments in it."""
    segments = [{"id": s["id"], "category_id": category_id(s["class"]), "iscrowd": 0, "isthing": int(s["thing"]),
                 "area": s["area"], "bbox": _bbox(panoptic.ids == s["id"]), "score": s["score"]}
                for s in panoptic.segments]
    return {"image_id": int(image_id), "file_name": file_name, "segments_info": segments}


def _edges(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment (0 is no segment)."""
    edges = np.zeros(ids.shape, dtype=bool)
    right, down = ids[:, 1:] != ids[:, :-1], ids[1:, :] != ids[:-1, :]
    edges[:, :-1] |= right
    edges[:, 1:] |= right
    edges[:-1, :] |= down
    edges[1:, :] |= down
    return edges & (ids > 0)


def _paint(image: np.ndarray, ids: np.ndarray, colours: dict[int, np.ndarray], alphas: dict[int, float]) -> np.ndarray:
    """Each segment id of `ids` (0 none) blended in its colour at its alpha, outlined in white."""
    out = image.astype(np.float32)
    for segment, colour in colours.items():
        where = ids == segment
        out[where] = (1 - alphas[segment]) * out[where] + alphas[segment] * np.asarray(colour, dtype=np.float32)
    out[_edges(ids)] = 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def instance_overlay(image: np.ndarray, instances: Instances, alpha: float = 0.6) -> np.ndarray:
    """Each instance in its own colour over an (H, W, 3) uint8 image, outlined; the best-scoring on top."""
    ids = np.zeros(image.shape[:2], dtype=np.int64)
    for k in range(len(instances.masks) - 1, -1, -1):  # worst first, so better ones paint over
        ids[instances.masks[k]] = k + 1
    palette = instance_colours(len(instances.masks))
    return _paint(image, ids, {k + 1: palette[k] for k in range(len(palette))}, {k + 1: alpha for k in range(len(palette))})


def panoptic_overlay(image: np.ndarray, panoptic: Panoptic, palette: Sequence[Sequence[int]], alpha: float = 0.6,
                     stuff_alpha: float = 0.3, unpainted: Collection[int] = ()) -> np.ndarray:
    """Each thing segment in its own colour, stuff lighter in its class colour, every segment outlined; void and
    stuff of the `unpainted` classes (background and the like) as they are, outlined only."""
    things = [s["id"] for s in panoptic.segments if s["thing"]]
    colours = dict(zip(things, instance_colours(len(things))))
    colours.update({s["id"]: palette[s["class"]] for s in panoptic.segments
                    if not s["thing"] and s["class"] not in unpainted})
    alphas = {s["id"]: alpha if s["thing"] else stuff_alpha for s in panoptic.segments}
    return _paint(image, panoptic.ids, colours, alphas)
