"""Images in, label maps, instances or panoptic segments out: letterbox, batch, run, crop, resize back.

Shapes: B images a batch, H x W an image, S the square input's side, N prompts, M the mask side, C classes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .backends import ModelError, Runner
from .contract import (CLASS_PROBS, INPUT, IOU, LABELS, MASK_LOGITS, ContractError, GraphMetadata, check_io_specs,
                       check_outputs)
from .instances import (InstanceOptions, Instances, Panoptic, PanopticOptions, instances_from_prompts,
                        panoptic_from_prompts)
from .postprocess import restore_labels
from .preprocess import Letterbox, letterbox

__all__ = ["Segmenter", "check_metadata", "image_outputs", "task_result", "TASKS", "TASK_OUTPUTS"]

TASKS = ("semantic", "instance", "panoptic")
# The graph outputs each task reads.
TASK_OUTPUTS = {"semantic": (LABELS,), "instance": (MASK_LOGITS, IOU, CLASS_PROBS), "panoptic": (MASK_LOGITS, IOU, CLASS_PROBS)}


def check_metadata(runner: Runner) -> GraphMetadata:
    """The graph's metadata (checked when the runner decoded it), with the inputs and outputs it declares checked
    against the contract it states; a ModelError for a model without it or breaking it."""
    if runner.metadata is None:
        raise ModelError(f"{runner.path}: no ssprompt metadata; export it with ssp-export")
    try:
        check_io_specs(runner.inputs, runner.outputs, runner.metadata)
    except ContractError as err:
        raise ModelError(f"{runner.path}: {err}; export it again with ssp-export") from None
    return runner.metadata


class Segmenter:
    """Segments RGB images with an activated runner, using the graph's own metadata."""

    def __init__(self, runner: Runner) -> None:
        meta = check_metadata(runner)
        self.runner = runner
        self.input_size = meta.input_size
        self.pad_value = tuple(meta.pad_value)
        self.class_names: list[str] = list(meta.class_names)
        self.palette: list[list[int]] = meta.palette
        self.thing_classes: list[int] = list(meta.thing_classes)
        self.has_instances = meta.has_instances

    def check_task(self, task: str) -> None:
        """A ModelError where the graph cannot give `task`'s results (an older graph, or no thing classes)."""
        if task not in TASKS:
            raise ValueError(f"task {task!r}: choose {', '.join(TASKS)}")
        if task == "semantic":
            return
        if not self.has_instances:
            raise ModelError(f"{self.runner.path}: exported before instance and panoptic outputs (contract version "
                             f"{self.runner.metadata.contract_version}, no {CLASS_PROBS}); re-export it with ssp-export "
                             f"to run --task {task}")
        spec = next((o for o in self.runner.outputs if o.name == CLASS_PROBS), None)
        if spec is None or spec.shape[-1] != len(self.class_names):
            raise ModelError(f"{self.runner.path}: metadata says contract version {self.runner.metadata.contract_version} "
                             f"but the graph has no {CLASS_PROBS} output of {len(self.class_names)} classes; re-export it")
        if task == "instance" and not self.thing_classes:
            raise ModelError(f"{self.runner.path}: no class is a thing, so there are no instances; mark countable classes "
                             "with [thing] in classes.txt and train again")

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """An (H, W, 3) uint8 RGB image as the graph's (S, S, 3) input, and where it sits in it."""
        return letterbox(image, self.input_size, self.pad_value)

    def infer(self, squares: np.ndarray, tasks: Iterable[str]) -> dict[str, np.ndarray]:
        """The outputs `tasks` read (TASK_OUTPUTS) of one (B, S, S, 3) uint8 batch of prepared images, checked
        against the contract."""
        names = sorted({name for task in tasks for name in TASK_OUTPUTS[task]})
        outputs = self.runner.infer({INPUT: squares}, names)
        try:
            check_outputs(outputs, self.runner.metadata, len(squares))
        except ContractError as err:
            raise ModelError(f"{self.runner.path}: {err}; the graph breaks the ssprompt contract") from None
        return outputs

    def run(self, task: str, images: list[np.ndarray], instance_options: InstanceOptions = InstanceOptions(),
            panoptic_options: PanopticOptions = PanopticOptions()) -> list:
        """Each image's `task` result at its own size (one batch): prepare, infer, `task_result`."""
        self.check_task(task)
        boxed = [self.prepare(image) for image in images]
        outputs = self.infer(np.stack([square for square, _ in boxed]), [task])
        return [task_result(task, image_outputs(outputs, i), placement, self.thing_classes, instance_options,
                            panoptic_options) for i, (_, placement) in enumerate(boxed)]

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """
        Arguments:
          images: (H, W, 3) uint8 RGB images of any sizes (one batch).

        Returns:
          One (H, W) class-index map per image, at that image's size.
        """
        return self.run("semantic", images)

    def instances(self, images: list[np.ndarray], options: InstanceOptions = InstanceOptions()) -> list[Instances]:
        """Each image's thing instances at its own size, best first (instances.py)."""
        return self.run("instance", images, instance_options=options)

    def panoptic(self, images: list[np.ndarray], options: PanopticOptions = PanopticOptions()) -> list[Panoptic]:
        """Each image's panoptic segmentation at its own size (instances.py)."""
        return self.run("panoptic", images, panoptic_options=options)


def image_outputs(outputs: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """Image `index`'s rows of a batch's outputs (the batch axis dropped)."""
    return {name: value[index] for name, value in outputs.items()}


def task_result(task: str, outputs: dict[str, np.ndarray], placement: Letterbox, things: Sequence[int],
                instance_options: InstanceOptions = InstanceOptions(),
                panoptic_options: PanopticOptions = PanopticOptions()) -> np.ndarray | Instances | Panoptic:
    """One image's result from its rows of the graph's outputs (`image_outputs`), at the image's size.

    Arguments:
      outputs: TASK_OUTPUTS[task] by name: (S, S) labels, or (N, M, M) mask logits, (N,) IoU and (N, C) class
        probabilities.
      placement: where the image sat in the square input.
      things: the graph's thing classes.

    Returns:
      (H, W) class indices (semantic), Instances (instance) or Panoptic (panoptic).
    """
    if task == "semantic":
        return restore_labels(outputs[LABELS], placement)
    prompts = (outputs[MASK_LOGITS], outputs[IOU], outputs[CLASS_PROBS], things, placement)
    if task == "instance":
        return instances_from_prompts(*prompts, instance_options)
    return panoptic_from_prompts(*prompts, panoptic_options)
