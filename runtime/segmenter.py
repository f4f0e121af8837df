"""Images in, label maps, instances or panoptic segments out: letterbox, batch, run, crop, resize back.

Shapes: B images a batch, H x W an image, S the square input's side, N prompts, M the mask side, C classes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .contract import CLASS_PROBS, INPUT, ContractError, GraphMetadata, check_io_specs, check_outputs
from .errors import ModelError, OptionError
from .instances import InstanceOptions, Instances, Panoptic, PanopticOptions
from .preprocess import Letterbox, letterbox
from .runner import Runner
from .tasks import TASKS

__all__ = ["Segmenter", "check_metadata", "image_outputs"]


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
            raise OptionError(f"task {task!r}: choose {', '.join(TASKS)}")
        if CLASS_PROBS not in TASKS[task].outputs:
            return
        if not self.has_instances:
            raise ModelError(f"{self.runner.path}: exported before instance and panoptic outputs (contract version "
                             f"{self.runner.metadata.contract_version}, no {CLASS_PROBS}); re-export it with ssp-export "
                             f"to run --task {task}")
        spec = next((o for o in self.runner.outputs if o.name == CLASS_PROBS), None)
        if spec is None or spec.shape[-1] != len(self.class_names):
            raise ModelError(f"{self.runner.path}: metadata says contract version {self.runner.metadata.contract_version} "
                             f"but the graph has no {CLASS_PROBS} output of {len(self.class_names)} classes; re-export it")
        if TASKS[task].needs_things and not self.thing_classes:
            raise ModelError(f"{self.runner.path}: no class is a thing, so there are no instances; mark countable classes "
                             "with [thing] in classes.txt and train again")

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """An (H, W, 3) uint8 RGB image as the graph's (S, S, 3) input, and where it sits in it."""
        return letterbox(image, self.input_size, self.pad_value)

    def infer(self, squares: np.ndarray, tasks: Iterable[str]) -> dict[str, np.ndarray]:
        """The outputs `tasks` read (Task.outputs) of one (B, S, S, 3) uint8 batch of prepared images, checked
        against the contract."""
        names = sorted({name for task in tasks for name in TASKS[task].outputs})
        outputs = self.runner.infer({INPUT: squares}, names)
        try:
            check_outputs(outputs, self.runner.metadata, len(squares))
        except ContractError as err:
            raise ModelError(f"{self.runner.path}: {err}; the graph breaks the ssprompt contract") from None
        return outputs

    def run(self, task: str, images: list[np.ndarray], instance_options: InstanceOptions = InstanceOptions(),
            panoptic_options: PanopticOptions = PanopticOptions()) -> list:
        """Each image's `task` result at its own size (one batch): prepare, infer, Task.result."""
        self.check_task(task)
        boxed = [self.prepare(image) for image in images]
        outputs = self.infer(np.stack([square for square, _ in boxed]), [task])
        return [TASKS[task].result(image_outputs(outputs, i), placement, self.thing_classes, instance_options,
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

