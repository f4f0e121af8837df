"""INT8 ONNX graphs: static post-training quantization in QDQ form with onnxruntime.quantization.

Weights are quantized per output channel, activations per tensor, both as symmetric signed int8:
the form TensorRT builds INT8 engines from (explicit quantization) and ONNX Runtime's CPU provider
runs as integer kernels. Activation ranges come from calibration images the graph is run on
(minmax, entropy or percentile, the calibrators of onnxruntime.quantization), never from the
images the parity gate or an evaluation scores.

Calibration memory: onnxruntime's calibrators add nodes to a copy of the graph that reduce (minmax) or
output (entropy, percentile) every tensor they calibrate. Run in onnxruntime's default execution order,
the added reductions run late and keep every reduced tensor alive (the full-size graph ran out of
24 GB); run in priority-based order, each runs right after its tensor's producer, so the calibration
graph needs about what the graph itself needs. The histogram calibrators make whole tensors graph
outputs (the decoder's are N x 4096 x 256 each), so their ranges are collected one op type at a time
(a tensor's histogram does not depend on which others are collected with it). Images go in one a run;
the ranges are merged and handed to quantize_static as its calibration cache.

Which op types stay in float is measured, not guessed: benchmarks/int8_ops.py writes the parity
of each op type quantized alone to benchmarks/results/int8_ops_*.md.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssprompt.runtime.contract import INPUT

__all__ = ["KEEP_FLOAT", "CALIBRATION_METHODS", "CALIB_IMAGES", "Int8Config", "CalibrationSet", "calibration_files", "calibration_set",
           "calibration_ranges", "quantizable_op_types", "quantize", "to_int8", "op_type_agreement"]

# Op types left in float by default. Measured (benchmarks/results/int8_ops_cpu.md, world task's pretrained tiny model,
# 8 held-out scenes): every quantizable op type keeps >= 99.4 % of labels alone (MatMul 99.41, Softmax 99.52 the lowest),
# all of them together 99.21 %, above the 97 % gate, so none is kept in float; --keep-float adds some where the gate
# says so for another model.
KEEP_FLOAT: tuple[str, ...] = ()
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIB_IMAGES = 16  # calibration images by default
# Op types onnxruntime's QDQ quantizer would touch that carry no arithmetic worth quantizing on their own:
# they only pass the quantization of their neighbours on (data movement).
_DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "Concat", "Split",
                  "Expand", "Tile", "Pad", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool", "ArgMax", "Where",
                  "DepthToSpace", "SpaceToDepth", "Identity"}


@dataclass(frozen=True)
class Int8Config:
    """How `to_int8` quantizes: the calibrator and the op types that stay in float."""

    method: str = "minmax"  # one of CALIBRATION_METHODS
    keep_float: tuple[str, ...] = KEEP_FLOAT  # op types left unquantized
    per_channel: bool = True  # weights: one scale per output channel
    reduce_range: bool = False  # 7-bit weights (guards integer saturation on CPUs without VNNI)


@dataclass
class CalibrationSet:
    """Letterboxed images the ranges are collected on, and what identifies them."""

    images: np.ndarray  # K x S x S x 3 uint8
    files: list[Path]  # where each came from, in order
    sha256: str  # SHA-256 over the files' own SHA-256 hex digests, in order

    def describe(self) -> dict:
        """The graph metadata's `calibration` entry (method added by the caller)."""
        return {"images": int(len(self.images)), "sha256": self.sha256}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_files(calib: Path | None, train_config: dict) -> tuple[list[Path], list[Path]]:
    """(candidate calibration images, evaluation images), each sorted.

    Candidates: the images under `calib`, or else the training split the pack was trained from
    (`train_config`'s data and split). Evaluation images: the pack's held-out split (val_split), where
    the pack records one and it is on this machine; calibration_set refuses any of them.

    Raises:
      ValueError: no candidates (the message says where it looked).
    """
    from ssprompt.runtime.images import IMAGE_EXTENSIONS
    from ssprompt.train.data.layouts import open_folder

    data, split, val_split = train_config.get("data"), train_config.get("split"), train_config.get("val_split")
    evaluation: list[Path] = []
    if data and val_split and Path(data).is_dir():
        evaluation = [sample.image for sample in open_folder(data, val_split).samples]
    if calib is not None:
        files = sorted(p for p in Path(calib).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{calib}: no images to calibrate on")
        return files, evaluation
    if not data:
        raise ValueError("the pack records no training images; pass --calib DIR (images like the ones the graph will see)")
    if not Path(data).is_dir():
        raise ValueError(f"{data}: the pack's training images are not on this machine; pass --calib DIR")
    return [sample.image for sample in open_folder(data, split).samples], evaluation


def calibration_set(files: list[Path], image_size: int, pad_value, forbidden: list[Path] = ()) -> CalibrationSet:
    """The calibration images of `files`, letterboxed to S x S.

    Arguments:
      files: image files, in the order they are used.
      forbidden: evaluation images; a calibration file with the same path or the same contents is refused,
        so that the gate's and an evaluation's scores never come from images the ranges were fitted on.

    Raises:
      ValueError: a calibration file is an evaluation image (the message names both).
    """
    from ssprompt.runtime.preprocess import letterbox
    from ssprompt.train.data.reading import read_image

    digests = [_file_digest(p) for p in files]
    held_out = {p.resolve(): p for p in forbidden}
    held_out_digests = {_file_digest(p): p for p in forbidden}
    for path, digest in zip(files, digests):
        clash = held_out.get(path.resolve()) or held_out_digests.get(digest)
        if clash is not None:
            raise ValueError(f"{path}: calibration image is the evaluation image {clash}; calibrate on training images")
    images = np.stack([letterbox(read_image(p), image_size, pad_value)[0] for p in files])
    total = hashlib.sha256("".join(digests).encode())
    return CalibrationSet(images, list(files), total.hexdigest())


class _ImageReader:
    """onnxruntime.quantization's CalibrationDataReader over K x S x S x 3 images, one image a run."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.images):
            return None
        self.position += 1
        return {INPUT: self.images[self.position - 1:self.position]}

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(lambda: self.get_next(), None)


def quantizable_op_types(model) -> list[str]:
    """Op types of `model` (onnx.ModelProto) that onnxruntime's QDQ quantizer quantizes and that compute."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    supported = set(QDQRegistry) | set(QLinearOpsRegistry)
    present = {node.op_type for node in model.graph.node}
    return sorted(present & supported - _DATA_MOVEMENT)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {name!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _priority_ordered_session(model_path: str, providers: list[str]):
    """The calibrator's session as onnxruntime.quantization builds it (no graph optimization: the calibrated tensors
    keep their names), but in priority-based execution order (see the module docstring)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    return onnxruntime.InferenceSession(model_path, sess_options=options, providers=providers)


def calibration_ranges(fp32_path: Path, images: np.ndarray, method: str, op_types: list[str], log=print):
    """Activation ranges of every tensor the nodes of `op_types` read or write, on `images` (K x S x S x 3 uint8).

    minmax: one pass over the images; entropy and percentile: one pass an op type (see the module docstring).
    One image a run either way; the calibrators merge ranges and histograms across calls.

    Returns:
      onnxruntime.quantization.calibrate.TensorsData: tensor name -> range (and histogram, by method).
    """
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator

    merged: dict = {}
    calibrate_method = _method(method)
    groups = [op_types] if method == "minmax" else [[op] for op in op_types]
    with tempfile.TemporaryDirectory(prefix="ssp-int8-") as tmp:
        for group in groups:
            log(f"calibrating the tensors of {', '.join(group)} on {len(images)} images ({method})")
            # Symmetric ranges: the activations are stored as symmetric int8 (TensorRT's form).
            calibrator = create_calibrator(fp32_path, group, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=calibrate_method, use_external_data_format=True,
                                           extra_options={"symmetric": True})
            calibrator.infer_session = _priority_ordered_session(calibrator.augmented_model_path,
                                                                 calibrator.execution_providers)
            for index in range(len(images)):
                calibrator.collect_data(_ImageReader(images[index:index + 1]))
            merged.update(calibrator.compute_data().data)
            del calibrator
    return TensorsData(calibrate_method, merged)


def quantize(fp32_path: Path, out_path: Path, ranges, op_types: list[str], config: Int8Config) -> Path:
    """quantize_static of `fp32_path` with precomputed `ranges`, only `op_types` quantized; writes `out_path`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="ssp-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            str(fp32_path), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types), per_channel=config.per_channel, reduce_range=config.reduce_range,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, use_external_data_format=True,
            calibrate_method=ranges.calibration_method, calibration_cache_path=str(cache),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return out_path


def to_int8(fp32_path: Path, out_path: Path, images: np.ndarray, config: Int8Config = Int8Config(), log=print):
    """The INT8 (QDQ) model of the FP32 model at `fp32_path`, calibrated on `images` (K x S x S x 3 uint8).

    Returns:
      (onnx.ModelProto): the quantized model, loaded with its weights.
      (TensorsData): the ranges, for re-quantizing other op type choices without calibrating again.
      (list[str]): the op types quantized.
    """
    import onnx

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    present = quantizable_op_types(fp32)
    del fp32
    unknown = sorted(set(config.keep_float) - set(present))
    if unknown:
        log(f"keep-float op types not quantizable in this graph (ignored): {', '.join(unknown)}")
    op_types = [op for op in present if op not in config.keep_float]
    ranges = calibration_ranges(fp32_path, images, config.method, op_types, log)
    log(f"quantizing {', '.join(op_types) or 'nothing'} to int8 ({', '.join(config.keep_float) or 'nothing'} kept in float)")
    quantize(fp32_path, out_path, ranges, op_types, config)
    return onnx.load(str(out_path)), ranges, op_types


def op_type_agreement(fp32_path: Path, ranges, op_types: list[str], config: Int8Config, images: np.ndarray,
                      reference: dict, provider: str = "cpu") -> list[tuple[str, float]]:
    """(op type, label agreement with `reference` when only that op type is quantized), worst first.

    What the parity gate names when an INT8 graph fails it, and what benchmarks/int8_ops.py tabulates.
    `reference` holds the PyTorch FP32 graph's outputs on `images` (export.parity.torch_outputs).
    """
    from .parity import compare, onnx_outputs

    agreement = []
    with tempfile.TemporaryDirectory(prefix="ssp-int8-") as tmp:
        for op_type in op_types:
            path = quantize(fp32_path, Path(tmp) / f"{op_type}.onnx", ranges, [op_type], config)
            ours, device = onnx_outputs(path, images, provider=provider)
            agreement.append((op_type, compare(ours, reference, "int8", device).label_agreement))
            for leftover in Path(tmp).iterdir():
                leftover.unlink()
    return sorted(agreement, key=lambda pair: pair[1])
