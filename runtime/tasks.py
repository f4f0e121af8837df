"""The tasks, as one table: what each reads of the graph, what the graph must have for it, how one image's
result is made and written, and its one file for all images.

ssp-run's --task, ssp-serve's ?task=, the Segmenter, the writers (outputs.py) and the Ray pipeline all read
TASKS; a new task is one entry here (with its post-processing).

- semantic: (H, W) class indices, written as labels/<stem>.png (8-bit, 16-bit past 256 classes);
- instance: thing instances (Instances), every image's COCO results records in instances.json;
- panoptic: segments (Panoptic), panoptic/<stem>.png (COCO's RGB segment ids) and every image's COCO
  panoptic annotation in panoptic.json, with the categories.

Every task also draws overlays/<stem>.png where asked for (outputs.py).

Shapes: H x W an image, S the square input's side, N prompts, M the mask side, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

from .coco import instance_overlay, instance_records, panoptic_overlay, panoptic_png, panoptic_record
from .contract import CLASS_PROBS, IOU, LABELS, MASK_LOGITS, GraphMetadata
from .instances import InstanceOptions, Instances, Panoptic, PanopticOptions, instances_from_prompts, panoptic_from_prompts
from .palette import unpainted_classes
from .postprocess import overlay, restore_labels
from .preprocess import Letterbox

__all__ = ["Task", "TASKS", "Result", "Written", "OVERLAY_FOLDER", "OVERLAY_KEY"]

OVERLAY_FOLDER, OVERLAY_KEY = "overlays", "overlay"  # every task's overlays/<stem>.png, and its key in summary.json

Result = Union[np.ndarray, Instances, Panoptic]  # one image's result at its own size


@dataclass
class Written:
    """What one image of a task writes, before overlays and the fields every task records."""

    record: dict  # its fields of the image's entry in summary.json (the file's name aside)
    picture: np.ndarray | None  # its one file an image, (H, W) or (H, W, 3), written as PNG under Task.folder
    coco: list[dict]  # its records of the task's one file for all images (none for semantic)


@dataclass(frozen=True)
class Task:
    name: str
    help: str  # what it writes, for --task
    outputs: tuple[str, ...]  # the graph outputs it reads
    needs_things: bool  # whether the graph must mark a class a thing ([thing] in classes.txt)
    folder: str | None  # the folder of its one file an image, <folder>/<stem>.png; None: none
    file_key: str | None  # the key that names that file in the image's entry of summary.json
    json_file: str | None  # its one file for all images, beside summary.json; None: none
    # (image's rows of `outputs`, where it sat in the square input, thing classes, options) -> its result at its size
    result: Callable[[dict[str, np.ndarray], Letterbox, Sequence[int], InstanceOptions, PanopticOptions], Result]
    write: Callable[[GraphMetadata, Result, str, int], Written]  # (metadata, result, stem, image id)
    overlay: Callable[[np.ndarray, Result, GraphMetadata], np.ndarray]  # (image, result, metadata) -> picture
    collect: Callable[[list[dict], list[dict]], object] | None = None  # (every image's coco, categories) -> json_file's value


def _label_image(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)


# ---------------------------------------------------------------- semantic: (H, W) class indices


def _semantic_result(outputs: dict[str, np.ndarray], placement: Letterbox, things: Sequence[int],
                     instance_options: InstanceOptions, panoptic_options: PanopticOptions) -> np.ndarray:
    return restore_labels(outputs[LABELS], placement)


def _semantic_write(meta: GraphMetadata, labels: np.ndarray, stem: str, image_id: int) -> Written:
    present = [meta.class_names[c] for c in np.unique(labels) if c < len(meta.class_names)]
    return Written({"classes": present}, _label_image(labels, len(meta.class_names)), [])


def _semantic_overlay(image: np.ndarray, labels: np.ndarray, meta: GraphMetadata) -> np.ndarray:
    return overlay(image, labels, meta.palette, unpainted=unpainted_classes(meta.class_names))


# ---------------------------------------------------------------- instance and panoptic: from the prompts' masks

_PROMPT_OUTPUTS = (MASK_LOGITS, IOU, CLASS_PROBS)  # (N, M, M) mask logits, (N,) IoU, (N, C) class probabilities


def _instance_result(outputs: dict[str, np.ndarray], placement: Letterbox, things: Sequence[int],
                     instance_options: InstanceOptions, panoptic_options: PanopticOptions) -> Instances:
    return instances_from_prompts(*(outputs[name] for name in _PROMPT_OUTPUTS), things, placement, instance_options)


def _instance_write(meta: GraphMetadata, instances: Instances, stem: str, image_id: int) -> Written:
    return Written({"instances": len(instances.masks)}, None, instance_records(image_id, instances))


def _instance_overlay(image: np.ndarray, instances: Instances, meta: GraphMetadata) -> np.ndarray:
    return instance_overlay(image, instances)


def _panoptic_result(outputs: dict[str, np.ndarray], placement: Letterbox, things: Sequence[int],
                     instance_options: InstanceOptions, panoptic_options: PanopticOptions) -> Panoptic:
    return panoptic_from_prompts(*(outputs[name] for name in _PROMPT_OUTPUTS), things, placement, panoptic_options)


def _panoptic_write(meta: GraphMetadata, panoptic: Panoptic, stem: str, image_id: int) -> Written:
    return Written({"segments": len(panoptic.segments)}, panoptic_png(panoptic.ids),
                   [panoptic_record(image_id, f"{stem}.png", panoptic)])


def _panoptic_overlay(image: np.ndarray, panoptic: Panoptic, meta: GraphMetadata) -> np.ndarray:
    return panoptic_overlay(image, panoptic, meta.palette, unpainted=unpainted_classes(meta.class_names))


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("semantic", "label PNGs", (LABELS,), needs_things=False, folder="labels", file_key="label", json_file=None,
         result=_semantic_result, write=_semantic_write, overlay=_semantic_overlay),
    Task("instance", "COCO results JSON (RLE masks)", _PROMPT_OUTPUTS, needs_things=True, folder=None, file_key=None,
         json_file="instances.json",
         result=_instance_result, write=_instance_write, overlay=_instance_overlay,
         collect=lambda coco, categories: coco),
    Task("panoptic", "COCO panoptic PNGs + JSON", _PROMPT_OUTPUTS, needs_things=False, folder="panoptic",
         file_key="panoptic", json_file="panoptic.json",
         result=_panoptic_result, write=_panoptic_write, overlay=_panoptic_overlay,
         collect=lambda coco, categories: {"annotations": coco, "categories": categories}),
)}
