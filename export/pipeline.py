"""The export job behind `ssp-export`: pack → ONNX (parity-gated) → engine / Triton repository."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssprompt.runtime.contract import CONTRACT_VERSION, GraphMetadata
from ssprompt.runtime.files import atomic_folder, remove_stale_temporaries
from ssprompt.runtime.images import error_reason
from ssprompt.runtime.preprocess import letterbox
from ssprompt.train.backbones import file_sha256
from ssprompt.train.pack import Pack

from .fp16 import KEEP_FP32, to_fp16
from .onnx_export import export_onnx, write_model
from .parity import Parity, check_parity
from .tensorrt import BatchRange, build_engine, tensorrt_available, trtexec_command, write_sidecar

__all__ = ["ExportError", "ExportResult", "export_pack", "graph_metadata", "calibration_images"]

DEFAULT_BATCH = BatchRange(1, 1, 8)
MODEL_FILE = "model.onnx"
PLAN_FILE = "model.plan"


class ExportError(RuntimeError):
    """The export cannot be completed; one line that says why."""


@dataclass
class ExportResult:
    out: Path  # the output folder
    onnx: Path  # the ONNX model inside it
    parity: Parity | None  # None when the gate was skipped
    seconds: float  # wall time of the whole export
    onnx_bytes: int  # size of the ONNX model (with external data)
    engine: Path | None  # TensorRT plan, when one was built
    trtexec: str | None  # the command to build it elsewhere, when TensorRT is absent
    triton: list[Path]  # config.pbtxt files written


def graph_metadata(model, pack: Pack, pack_path: Path, precision: str) -> GraphMetadata:
    """What the runtime needs to pre- and post-process, and what identifies the graph."""
    from ssprompt.train.pack import package_version

    return GraphMetadata(
        class_names=list(pack.class_names),
        palette=[list(c) for c in pack.palette],
        input_size=int(model.image_size),
        mask_size=int(model.mask_size),
        num_prompts=int(model.num_prompts),
        pad_value=list(model.pad_value),
        normalization=model.normalization(),
        pack_sha256=file_sha256(pack_path),
        backbones=pack.backbones,
        precision=precision,
        ssprompt_version=package_version(),
        contract_version=CONTRACT_VERSION,
        thing_classes=list(pack.thing_classes),
    )


def calibration_images(image_size: int, pad_value, calib: Path | None, count: int = 4) -> np.ndarray:
    """K x S x S x 3 letterboxed images: the first `count` of `calib`, or generated scenes."""
    from ssprompt.train.data import IMAGE_EXTENSIONS, read_image

    if calib is not None:
        files = sorted(p for p in Path(calib).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:count]
        if not files:
            raise ExportError(f"{calib}: no images for the parity check")
        images = [read_image(p) for p in files]
    else:
        from ssprompt.train.synthetic import make_synthetic

        with tempfile.TemporaryDirectory() as tmp:
            root = make_synthetic(Path(tmp) / "calib", n_train=count, n_val=1, seed=1234)
            images = [read_image(p) for p in sorted((root / "train" / "images").iterdir())]
    return np.stack([letterbox(image, image_size, pad_value)[0] for image in images])


_TRACED: dict = {}  # the last graph traced: key -> onnx.ModelProto (FP32)


def traced_graph(graph, key: tuple, log=print):
    """`export_onnx(graph)`, remembering the last result by `key` (pack digest, checkpoints, layout), so that
    exporting one pack in FP32 and then FP16 traces it once. Callers must not modify the returned graph
    beyond its metadata."""
    if key not in _TRACED:
        _TRACED.clear()
        log("tracing the graph to ONNX")
        _TRACED[key] = export_onnx(graph)
    return _TRACED[key]


def export_pack(
    pack_path: Path,
    out: Path,
    sam_checkpoint: str | None = None,
    clip_pretrained: str | None = None,
    fp16: bool = False,
    batch: BatchRange = DEFAULT_BATCH,
    engine: bool = False,
    triton: bool = False,
    calib: Path | None = None,
    parity_gate: bool = True,
    force: bool = False,
    workspace_mib: int = 4096,
    timing_cache: Path | None = None,
    parity_provider: str = "auto",
    layout: str = "graph",
    keep_fp32: tuple[str, ...] = KEEP_FP32,
    log=print,
) -> ExportResult:
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack

    from .graph import ONNX_RUNTIME_ONLY, ExportGraph

    began = time.perf_counter()
    if engine and layout in ONNX_RUNTIME_ONLY:
        raise ExportError(f"--engine: TensorRT cannot build ONNX Runtime's contrib ops (--{layout}); "
                          f"export without --{layout} for TensorRT")
    if out.exists() and not force:
        raise ExportError(f"{out}: exists; pass --force to replace it")
    if out.exists() and not (out / MODEL_FILE).is_file():
        raise ExportError(f"{out}: exists and is not an ssprompt export folder (no {MODEL_FILE}); choose another --out")
    pack = load_pack(pack_path)
    model, _ = model_from_pack(pack, sam_checkpoint, clip_pretrained, device="cpu", source=pack_path)
    precision = "fp16" if fp16 else "fp32"
    graph = ExportGraph(model, layout)

    remove_stale_temporaries(out.parent)  # what an export killed outright left behind
    with atomic_folder(out, MODEL_FILE) as tmp:
        onnx_model = traced_graph(graph, (file_sha256(pack_path), sam_checkpoint, clip_pretrained, layout), log)
        if fp16:
            log(f"converting to FP16 ({', '.join(keep_fp32) or 'nothing'} kept in FP32)")
            try:
                onnx_model = to_fp16(onnx_model, keep_fp32)
            except Exception as err:  # noqa: BLE001 - onnx raises its own checker errors
                raise ExportError(f"FP16 conversion failed: {error_reason(err)}") from None
        if layout == "ort-fused":
            from .ort_fusion import fuse_skip_layer_norms

            onnx_model, fused = fuse_skip_layer_norms(onnx_model)
            log(f"{fused} residual additions and layer norms fused (SkipLayerNormalization)")
        metadata = graph_metadata(model, pack, pack_path, precision)
        onnx_path = write_model(onnx_model, tmp / MODEL_FILE, metadata)
        del onnx_model

        parity = None
        if parity_gate:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                raise ExportError("the parity gate needs onnxruntime: pip install 'ssprompt[ort]' (CPU) or 'ssprompt[gpu]' "
                                  "(NVIDIA), or pass --no-parity") from None
            images = calibration_images(model.image_size, model.pad_value, calib)
            import torch

            try:
                parity = check_parity(graph.to("cuda" if torch.cuda.is_available() else "cpu"), onnx_path, images,
                                      precision, parity_provider)
            except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
                raise ExportError(f"parity check could not run {MODEL_FILE}: {error_reason(err)}") from None
            log(parity.describe())
            if not parity.passed:
                hint = "; --keep-fp32 can keep more op types in FP32" if fp16 else ""
                raise ExportError(f"parity gate failed: {parity.describe()}; nothing written{hint}")

        plan_path, command = None, None
        cache = timing_cache or out.with_name(out.name + ".timing.cache")
        if engine:
            if tensorrt_available():
                facts = build_engine(onnx_path, tmp / PLAN_FILE, model.image_size, batch, fp16, workspace_mib, cache,
                                     file_sha256(onnx_path), log)
                write_sidecar(tmp / PLAN_FILE, metadata, facts)
                plan_path = out / PLAN_FILE
            else:
                command = trtexec_command(out / MODEL_FILE, out / PLAN_FILE, model.image_size, batch, fp16, workspace_mib, cache)
                (tmp / "build_engine.sh").write_text("#!/bin/sh\n# Build the TensorRT engine on the target machine.\n" + command + "\n")
                log("tensorrt does not import here: build the engine on the target machine with")
                log(f"  {command}")

        triton_configs = []
        if triton:
            from .triton import write_triton_repository

            name = "ssprompt_" + metadata.pack_sha256[:8]
            triton_configs = write_triton_repository(
                tmp / "triton", name, onnx_path, batch.max, tmp / PLAN_FILE if plan_path else None)
        onnx_bytes = sum(p.stat().st_size for p in tmp.glob(MODEL_FILE + "*"))
        triton_configs = [out / p.relative_to(tmp) for p in triton_configs]
    return ExportResult(out, out / MODEL_FILE, parity, time.perf_counter() - began, onnx_bytes, plan_path, command,
                        triton_configs)
