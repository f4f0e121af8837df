"""Images in, label maps, instances or panoptic segments out: letterbox, batch, run, crop, resize back.

Shapes: B images a batch, H x W an image, S the square input's side, N prompts, M the mask side, C classes.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .backends import ModelError, Runner
from .contract import (CLASS_PROBS, INPUT, IOU, LABELS, MASK_LOGITS, ContractError, GraphMetadata, check_output_specs,
                       check_outputs)
from .instances import (InstanceOptions, Instances, Panoptic, PanopticOptions, instances_from_prompts,
                        panoptic_from_prompts)
from .postprocess import restore_labels
from .palette import unpainted_classes
from .preprocess import Letterbox, letterbox

__all__ = ["Segmenter", "check_metadata", "TASKS"]

TASKS = ("semantic", "instance", "panoptic")


def check_metadata(runner: Runner) -> GraphMetadata:
    """The graph's metadata (checked when the runner decoded it), with the outputs it declares checked against
    the contract it states; a ModelError for a model without it or breaking it."""
    if runner.metadata is None:
        raise ModelError(f"{runner.path}: no ssprompt metadata; export it with ssp-export")
    try:
        check_output_specs(runner.outputs, runner.metadata)
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
        self.unpainted = unpainted_classes(self.class_names)  # overlays leave background and void as they are
        self.thing_classes: list[int] = list(meta.thing_classes)
        self.has_instances = meta.has_instances

    def _infer(self, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """The runner's outputs `names` for a (B, S, S, 3) batch, checked against the contract."""
        outputs = self.runner.infer({INPUT: batch}, names)
        try:
            check_outputs(outputs, self.runner.metadata, len(batch))
        except ContractError as err:
            raise ModelError(f"{self.runner.path}: {err}; the graph breaks the ssprompt contract") from None
        return outputs

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

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """
        Arguments:
          images: (H, W, 3) uint8 RGB images of any sizes (one batch).

        Returns:
          One (H, W) class-index map per image, at that image's size.
        """
        boxed = [letterbox(image, self.input_size, self.pad_value) for image in images]
        batch = np.stack([square for square, _ in boxed])  # (B, S, S, 3)
        labels = self._infer(batch, [LABELS])[LABELS]  # (B, S, S)
        return [restore_labels(labels[i], placement) for i, (_, placement) in enumerate(boxed)]

    def _prompt_outputs(self, images: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, Letterbox]]:
        """Each image's (N, M, M) mask logits, (N,) IoU estimates, (N, C) class probabilities and placement."""
        boxed = [letterbox(image, self.input_size, self.pad_value) for image in images]
        outputs = self._infer(np.stack([square for square, _ in boxed]), [MASK_LOGITS, IOU, CLASS_PROBS])
        for i, (_, placement) in enumerate(boxed):
            yield outputs[MASK_LOGITS][i], outputs[IOU][i], outputs[CLASS_PROBS][i], placement

    def instances(self, images: list[np.ndarray], options: InstanceOptions = InstanceOptions()) -> list[Instances]:
        """Each image's thing instances at its own size, best first (instances.py)."""
        self.check_task("instance")
        return [instances_from_prompts(masks, iou, probs, self.thing_classes, placement, options)
                for masks, iou, probs, placement in self._prompt_outputs(images)]

    def panoptic(self, images: list[np.ndarray], options: PanopticOptions = PanopticOptions()) -> list[Panoptic]:
        """Each image's panoptic segmentation at its own size (instances.py)."""
        self.check_task("panoptic")
        return [panoptic_from_prompts(masks, iou, probs, self.thing_classes, placement, options)
                for masks, iou, probs, placement in self._prompt_outputs(images)]
