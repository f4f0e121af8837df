"""What ssp-run writes for one image, as bytes: the one encoding that ssp-run, ssp-serve and the Ray
pipeline share, so that all three answer the same image with the same bytes.

- semantic: labels/<stem>.png, a class index a pixel (8-bit, 16-bit past 256 classes);
- instance: the image's COCO results records (instances.json holds every image's);
- panoptic: panoptic/<stem>.png (COCO's RGB segment ids) and its COCO panoptic annotation
  (panoptic.json holds every image's, with the categories);
- overlays/<stem>.png where asked for; and the image's entry in summary.json.

Shapes: H x W an image.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .coco import instance_overlay, instance_records, panoptic_overlay, panoptic_png, panoptic_record
from .contract import GraphMetadata
from .instances import InstanceOptions, Instances, Panoptic, PanopticOptions
from .palette import unpainted_classes
from .postprocess import overlay

__all__ = ["TASK_JSON", "TaskSettings", "ImageOutputs", "png_bytes", "encode_image", "task_json"]

# Each task's one file for all images, beside summary.json.
TASK_JSON = {"semantic": None, "instance": "instances.json", "panoptic": "panoptic.json"}


@dataclass(frozen=True)
class TaskSettings:
    """Everything besides the model and the image that decides an image's outputs."""

    task: str = "semantic"
    with_overlay: bool = False
    instance_options: InstanceOptions = field(default_factory=InstanceOptions)
    panoptic_options: PanopticOptions = field(default_factory=PanopticOptions)


@dataclass
class ImageOutputs:
    record: dict  # the image's entry in summary.json, less its seconds
    files: dict[str, bytes]  # path under the output folder -> the PNG's bytes
    coco: list[dict]  # its instances.json records (instance) or its one panoptic.json annotation (panoptic)


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) array as a PNG file's bytes (Pillow's encoder, its default settings)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _label_image(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)


def encode_image(meta: GraphMetadata, settings: TaskSettings, result: np.ndarray | Instances | Panoptic, file: str,
                 stem: str, image_id: int, size: tuple[int, int], image: np.ndarray | None = None) -> ImageOutputs:
    """One image's outputs.

    Arguments:
      result: the task's result at the image's size (Segmenter.run): (H, W) class indices, Instances or Panoptic.
      file: the input as summary.json names it; stem: its output name; image_id: its COCO id.
      size: the image's (H, W).
      image: the (H, W, 3) uint8 image, which overlays are drawn over (needed only with `settings.with_overlay`).
    """
    if settings.with_overlay and image is None:
        raise ValueError("overlays are drawn over the image: pass it")
    record = {"file": file, "image_id": int(image_id), "height": int(size[0]), "width": int(size[1])}
    files: dict[str, bytes] = {}
    coco: list[dict] = []
    picture = None
    if settings.task == "semantic":
        record["label"] = f"labels/{stem}.png"
        files[record["label"]] = png_bytes(_label_image(result, len(meta.class_names)))
        record["classes"] = [meta.class_names[c] for c in np.unique(result) if c < len(meta.class_names)]
        if settings.with_overlay:
            picture = overlay(image, result, meta.palette, unpainted=unpainted_classes(meta.class_names))
    elif settings.task == "instance":
        coco = instance_records(image_id, result)
        record["instances"] = len(result.masks)
        if settings.with_overlay:
            picture = instance_overlay(image, result)
    else:
        record["panoptic"] = f"panoptic/{stem}.png"
        files[record["panoptic"]] = png_bytes(panoptic_png(result.ids))
        coco = [panoptic_record(image_id, f"{stem}.png", result)]
        record["segments"] = len(result.segments)
        if settings.with_overlay:
            picture = panoptic_overlay(image, result, meta.palette, unpainted=unpainted_classes(meta.class_names))
    if picture is not None:
        record["overlay"] = f"overlays/{stem}.png"
        files[record["overlay"]] = png_bytes(picture)
    return ImageOutputs(record, files, coco)


def task_json(task: str, coco: list[dict], categories: list[dict]) -> str | None:
    """The text of the task's one file for all images (TASK_JSON), from every image's `coco` in order; None
    for semantic."""
    if task == "instance":
        return json.dumps(coco)
    if task == "panoptic":
        return json.dumps({"annotations": coco, "categories": categories})
    return None
