"""What ssp-run writes for one image, as bytes: the one encoding that ssp-run, ssp-serve and the Ray
pipeline share, so that all three answer the same image with the same bytes.

What each task writes is its entry in TASKS (tasks.py); here: its one file an image as PNG bytes,
overlays/<stem>.png where asked for, the image's entry in summary.json, and the task's one file for
all images from every image's records.

Shapes: H x W an image.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .contract import GraphMetadata
from .instances import InstanceOptions, PanopticOptions
from .tasks import OVERLAY_FOLDER, OVERLAY_KEY, TASKS, Result

__all__ = ["TaskSettings", "ImageOutputs", "png_bytes", "encode_image", "task_json"]


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
    coco: list[dict]  # its records of the task's one file for all images (Task.json_file)


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) array as a PNG file's bytes (Pillow's encoder, its default settings)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(meta: GraphMetadata, settings: TaskSettings, result: Result, file: str, stem: str, image_id: int,
                 size: tuple[int, int], image: np.ndarray | None = None) -> ImageOutputs:
    """One image's outputs.

    Arguments:
      result: the task's result at the image's size (Segmenter.run): (H, W) class indices, Instances or Panoptic.
      file: the input as summary.json names it; stem: its output name; image_id: its COCO id.
      size: the image's (H, W).
      image: the (H, W, 3) uint8 image, which overlays are drawn over (needed only with `settings.with_overlay`).
    """
    if settings.with_overlay and image is None:
        raise ValueError("overlays are drawn over the image: pass it")
    task = TASKS[settings.task]
    record = {"file": file, "image_id": int(image_id), "height": int(size[0]), "width": int(size[1])}
    files: dict[str, bytes] = {}
    written = task.write(meta, result, stem, image_id)
    if written.picture is not None:
        record[task.file_key] = f"{task.folder}/{stem}.png"
        files[record[task.file_key]] = png_bytes(written.picture)
    record.update(written.record)
    if settings.with_overlay:
        record[OVERLAY_KEY] = f"{OVERLAY_FOLDER}/{stem}.png"
        files[record[OVERLAY_KEY]] = png_bytes(task.overlay(image, result, meta))
    return ImageOutputs(record, files, written.coco)


def task_json(task: str, coco: list[dict], categories: list[dict]) -> str | None:
    """The text of the task's one file for all images (Task.json_file), from every image's `coco` in order; None
    where the task has none."""
    collect = TASKS[task].collect
    return None if collect is None else json.dumps(collect(coco, categories))
