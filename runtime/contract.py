"""The exported graph's contract: its inputs and outputs as a table (name, dtype, axes), and its metadata as
one typed structure.

Export writes graphs and engine sidecars to this contract and the runtime reads them by it;
nothing else spells an I/O name, a dtype or a metadata key. Metadata travels as ONNX `metadata_props`
(and as the sidecar JSON of a TensorRT engine): one `ssprompt.<field>` entry a field, its value
JSON-encoded.

Shapes: B images, S the side of the square input, N spatial prompts, M = S / 4 the mask side, C classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import SSPromptError

__all__ = ["INPUT", "OUTPUTS", "BATCH_AXIS", "LABELS", "CONFIDENCE", "MASK_LOGITS", "IOU", "CLASS_IDS", "CLASS_PROBS",
           "IOSpec", "INPUT_SPECS", "OUTPUT_SPECS", "axis_sizes",
           "CONTRACT_VERSION", "METADATA_PREFIX", "PRECISIONS", "Normalization", "GraphMetadata", "EngineFacts",
           "MetadataError", "ContractError", "io_contract", "check_io_specs", "check_outputs"]

INPUT = "images"
LABELS = "labels"
CONFIDENCE = "confidence"
MASK_LOGITS = "mask_logits"
IOU = "iou"
CLASS_IDS = "class_ids"
CLASS_PROBS = "class_probs"
# Symbolic axes; BATCH_AXIS is the one dynamic axis (axis 0 of every input and output), the others are declared
# static, their sizes given by the graph's metadata (`axis_sizes`).
BATCH_AXIS = "batch"
SIDE, PROMPTS, MASK, CLASSES = "side", "prompts", "mask", "classes"


@dataclass(frozen=True)
class IOSpec:
    """One input or output of the graph."""

    name: str  # tensor name in the graph
    dtype: str  # numpy element type name
    axes: tuple[str | int, ...]  # symbolic axis names, or fixed sizes
    meaning: str

    def shape(self, sizes: dict[str, int], batch: int | str = BATCH_AXIS) -> tuple:
        """The axes resolved: `batch` for BATCH_AXIS, `sizes[axis]` for every other symbolic axis."""
        return tuple(batch if axis == BATCH_AXIS else sizes[axis] if isinstance(axis, str) else axis
                     for axis in self.axes)


INPUT_SPECS = (IOSpec(INPUT, "uint8", (BATCH_AXIS, SIDE, SIDE, 3), "letterboxed RGB images"),)
OUTPUT_SPECS = (  # in the order the graph returns them
    IOSpec(LABELS, "int32", (BATCH_AXIS, SIDE, SIDE), "class index per pixel of the square input"),
    IOSpec(CONFIDENCE, "float32", (BATCH_AXIS, SIDE, SIDE), "probability of that class"),
    IOSpec(MASK_LOGITS, "float32", (BATCH_AXIS, PROMPTS, MASK, MASK), "per-prompt mask logits"),
    IOSpec(IOU, "float32", (BATCH_AXIS, PROMPTS), "per-prompt IoU estimates"),
    IOSpec(CLASS_IDS, "int32", (BATCH_AXIS, PROMPTS), "per-prompt class"),
    IOSpec(CLASS_PROBS, "float32", (BATCH_AXIS, PROMPTS, CLASSES), "per-prompt class probabilities (contract 2 on)"),
)
OUTPUTS = tuple(spec.name for spec in OUTPUT_SPECS)
# 1: the first five outputs, no thing classes (graphs exported before instance / panoptic segmentation; they still run
#    semantic segmentation); 2: CLASS_PROBS and `thing_classes`. A graph without the field is a version 1 graph.
CONTRACT_VERSION = 2


def axis_sizes(input_size: int, mask_size: int = 0, num_prompts: int = 0, num_classes: int = 0) -> dict[str, int]:
    """The sizes of the symbolic static axes (0: not known to the caller, where it needs the input only)."""
    return {SIDE: input_size, MASK: mask_size, PROMPTS: num_prompts, CLASSES: num_classes}


METADATA_PREFIX = "ssprompt."
PRECISIONS = ("fp32", "fp16", "int8")
_OPTIONAL = ("engine", "contract_version", "thing_classes", "calibration")  # fields an older graph or sidecar may lack


class MetadataError(SSPromptError, ValueError):
    """Metadata that is missing, not JSON or of the wrong type; the message names the field."""


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _colour(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value))


@dataclass(frozen=True)
class Normalization:
    sam_mean: list[float]  # SAM's pixel mean, 0..255, RGB
    sam_std: list[float]  # SAM's pixel std, 0..255
    clip_mean: list[float]  # CLIP's mean, 0..1
    clip_std: list[float]  # CLIP's std, 0..1
    clip_input_size: int  # side CLIP sees (the square input resized)


@dataclass(frozen=True)
class EngineFacts:
    """What a TensorRT engine was built with and for (its sidecar only)."""

    tensorrt_version: str
    gpu: str  # GPU name the engine was built on
    batch: list[int]  # the optimisation profile: min, opt, max
    onnx_sha256: str  # the graph it was built from


@dataclass(frozen=True)
class GraphMetadata:
    """Everything the runtime needs to pre- and post-process, and what identifies the graph."""

    class_names: list[str]  # index order of the labels
    palette: list[list[int]]  # one RGB colour a class, 0..255
    input_size: int  # S
    mask_size: int  # M
    num_prompts: int  # N
    pad_value: list[int]  # letterbox padding, RGB 0..255
    normalization: Normalization
    pack_sha256: str
    backbones: dict  # SAM and CLIP names, checkpoints and sha256
    precision: str  # fp32, fp16 or int8
    ssprompt_version: str
    engine: EngineFacts | None = field(default=None)  # engine sidecars only
    contract_version: int = 1  # CONTRACT_VERSION of the exporter; absent in version 1 graphs
    thing_classes: list[int] = field(default_factory=list)  # indices of countable classes (instances); the rest are stuff
    calibration: dict | None = None  # int8 graphs: {"method", "images", "sha256"} of the calibration set

    def axis_sizes(self) -> dict[str, int]:
        """The sizes of the contract's static axes in this graph."""
        return axis_sizes(self.input_size, self.mask_size, self.num_prompts, len(self.class_names))

    @property
    def has_instances(self) -> bool:
        """Whether the graph gives what instance and panoptic post-processing read (CLASS_PROBS)."""
        return self.contract_version >= 2

    def encode(self) -> dict[str, str]:
        """metadata_props strings: one JSON value a field, under the prefix; no entry for an absent engine."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in ("normalization", "engine"):
                value = {k.name: getattr(value, k.name) for k in fields(value)}
            out[METADATA_PREFIX + f.name] = json.dumps(value)
        return out

    @classmethod
    def decode(cls, props: dict[str, str]) -> "GraphMetadata | None":
        """The metadata of `props` (ONNX metadata_props or a sidecar), None where it holds none of ours.

        Raises:
          MetadataError: a field that is missing, not JSON, or of the wrong type (the message names it).
        """
        ours = {key[len(METADATA_PREFIX):]: value for key, value in props.items() if key.startswith(METADATA_PREFIX)}
        if not ours:
            return None
        values = {}
        for name, text in ours.items():
            try:
                values[name] = json.loads(text)
            except (TypeError, ValueError):
                raise MetadataError(f"metadata {METADATA_PREFIX}{name} is not JSON") from None
        missing = [f.name for f in fields(cls) if f.name not in values and f.name not in _OPTIONAL]
        if missing:
            raise MetadataError(f"no ssprompt metadata ({', '.join(missing)}); export it with ssp-export")
        for name, kind in (("normalization", Normalization), ("engine", EngineFacts)):
            if values.get(name) is None and name == "engine":
                continue
            if not isinstance(values[name], dict):
                raise MetadataError(f"metadata {name} is not an object")
            try:
                values[name] = kind(**values[name])
            except TypeError:
                raise MetadataError(f"metadata {name} has other fields than this ssprompt reads") from None
        meta = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
        meta._check()
        return meta

    def _check(self) -> None:
        names, palette = self.class_names, self.palette
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise MetadataError("metadata class_names is not a list of names")
        if not isinstance(palette, list) or len(palette) != len(names) or not all(_colour(c) for c in palette):
            raise MetadataError(f"metadata palette needs {len(names)} colours of three integers in 0..255")
        for name in ("input_size", "mask_size", "num_prompts"):
            if not _positive_int(getattr(self, name)):
                raise MetadataError(f"metadata {name} is not a positive integer")
        if not _colour(self.pad_value):
            raise MetadataError("metadata pad_value is not three integers in 0..255")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"metadata precision is not one of {', '.join(PRECISIONS)}")
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise MetadataError("metadata calibration is not an object")
        for name in ("pack_sha256", "ssprompt_version"):
            if not isinstance(getattr(self, name), str):
                raise MetadataError(f"metadata {name} is not a string")
        if not isinstance(self.backbones, dict):
            raise MetadataError("metadata backbones is not an object")
        norm = self.normalization
        for name in ("sam_mean", "sam_std", "clip_mean", "clip_std"):
            value = getattr(norm, name)
            if not (isinstance(value, list) and len(value) == 3 and all(_number(v) for v in value)):
                raise MetadataError(f"metadata normalization.{name} is not three numbers")
        if not _positive_int(self.contract_version):
            raise MetadataError("metadata contract_version is not a positive integer")
        if self.contract_version > CONTRACT_VERSION:
            raise MetadataError(f"metadata contract_version {self.contract_version} is newer than this runtime reads "
                                f"(up to {CONTRACT_VERSION}); upgrade ssprompt")
        things = self.thing_classes
        if not (isinstance(things, list) and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names)
                                                 for c in things)):
            raise MetadataError(f"metadata thing_classes is not a list of class indices in 0..{len(names) - 1}")
        if not _positive_int(norm.clip_input_size):
            raise MetadataError("metadata normalization.clip_input_size is not a positive integer")
        engine = self.engine
        if engine is not None:
            if not all(isinstance(getattr(engine, n), str) for n in ("tensorrt_version", "gpu", "onnx_sha256")):
                raise MetadataError("metadata engine: tensorrt_version, gpu and onnx_sha256 must be strings")
            if not (isinstance(engine.batch, list) and len(engine.batch) == 3 and all(_positive_int(b) for b in engine.batch)):
                raise MetadataError("metadata engine.batch is not three positive integers (min, opt, max)")


class ContractError(SSPromptError, ValueError):
    """Graph inputs or outputs that break the contract (dtype, shape or values); the message names the tensor."""


def io_contract(meta: GraphMetadata) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each input's and output's dtype and shape after the batch axis, as `meta` says the graph was exported."""
    sizes = meta.axis_sizes()
    return {spec.name: (np.dtype(spec.dtype), spec.shape(sizes)[1:]) for spec in INPUT_SPECS + OUTPUT_SPECS}


def _shape_text(shape) -> str:
    return "(" + ", ".join("B" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(shape)) + ")"


def check_io_specs(inputs, outputs, meta: GraphMetadata) -> None:
    """The inputs and outputs a graph declares (objects with name, dtype and shape; -1 or a name where dynamic)
    against the contract, once per model: exactly the contract's inputs, every contract output it has, each of
    the contract's dtype and static shape.

    Raises:
      ContractError: naming the input or output, what it is and what the contract says.
    """
    contract = io_contract(meta)
    names = sorted(spec.name for spec in inputs)
    if names != sorted(spec.name for spec in INPUT_SPECS):
        raise ContractError(f"inputs are {', '.join(names) or 'none'}; the contract says "
                            f"{', '.join(spec.name for spec in INPUT_SPECS)}")
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if spec.name not in contract:
                continue
            dtype, shape = contract[spec.name]
            declared = tuple(spec.shape)
            static_ok = len(declared) == len(shape) + 1 and all(
                not isinstance(got, int) or got < 0 or got == want for got, want in zip(declared[1:], shape))
            if np.dtype(spec.dtype) != dtype or not static_ok:
                raise ContractError(f"{kind} {spec.name} is {np.dtype(spec.dtype)} {_shape_text(declared)}; the "
                                    f"contract (and the metadata) say {dtype} {_shape_text(('B', *shape))}")


def check_outputs(values: dict[str, np.ndarray], meta: GraphMetadata, batch: int) -> None:
    """One call's outputs against the contract: dtype, shape, and values (class indices within the classes,
    probabilities and IoU estimates not NaN).

    Raises:
      ContractError: naming the output and what is wrong.
    """
    contract = io_contract(meta)
    classes = len(meta.class_names)
    for name, value in values.items():
        if name not in contract:
            continue
        dtype, shape = contract[name]
        if value.dtype != dtype or value.shape != (batch, *shape):
            raise ContractError(f"output {name} is {value.dtype} {value.shape}; the contract says {dtype} "
                                f"{(batch, *shape)}")
        if name in (LABELS, CLASS_IDS) and value.size:
            low, high = int(value.min()), int(value.max())
            if low < 0 or high >= classes:
                raise ContractError(f"output {name} holds {low if low < 0 else high}, outside the {classes} classes "
                                    f"0..{classes - 1}")
        if name in (CONFIDENCE, IOU, CLASS_PROBS) and np.isnan(value).any():
            raise ContractError(f"output {name} holds NaN")
