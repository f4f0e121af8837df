"""The export job behind `ssp-export`: pack → ONNX (parity-gated) → engine / Triton repository."""

from __future__ import annotations

import contextlib
import shlex
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ssprompt.runtime.contract import CONTRACT_VERSION, EngineFacts, GraphMetadata
from ssprompt.runtime.errors import SSPromptError
from ssprompt.runtime.files import atomic_folder, exclusive, regular_files, remove_stale_temporaries
from ssprompt.runtime.images import error_reason
from ssprompt.runtime.preprocess import letterbox
from ssprompt.runtime.sidecar import PENDING, sidecar_path, write_sidecar
from ssprompt.train.backbones import file_sha256
from ssprompt.train.pack import Pack

from .fp16 import KEEP_FP32, to_fp16
from .int8 import CALIB_IMAGES, Int8Config
from .onnx_export import export_onnx, write_model
from .parity import THRESHOLDS, Parity, check_parity
from .tensorrt import BatchRange, build_engine, build_script, tensorrt_available

__all__ = ["ExportError", "ExportResult", "export_pack", "graph_metadata", "calibration_images"]

DEFAULT_BATCH = BatchRange(1, 1, 8)
PARITY_IMAGES = 4  # images the parity gate compares
MODEL_FILE = "model.onnx"
PLAN_FILE = "model.plan"
BUILD_SCRIPT = "build_engine.sh"  # trtexec, then the sidecar completed (where TensorRT is absent at export)


class ExportError(SSPromptError, RuntimeError):
    """The export cannot be completed; one line that says why."""


@dataclass
class ExportResult:
    out: Path  # the output folder
    onnx: Path  # the ONNX model inside it
    parity: Parity | None  # None when the gate was skipped
    seconds: float  # wall time of the whole export
    onnx_bytes: int  # size of the ONNX model (with external data)
    engine: Path | None  # TensorRT plan, when one was built
    trtexec: str | None  # the command that builds it elsewhere (sh OUT/build_engine.sh), when TensorRT is absent
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
    from ssprompt.runtime.images import IMAGE_EXTENSIONS
    from ssprompt.train.data.reading import read_image

    if calib is not None:
        if not Path(calib).is_dir():
            raise ExportError(f"{calib}: --calib must be a folder of images")
        files = regular_files(calib, IMAGE_EXTENSIONS, recursive=True)[:count]
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
    int8: Int8Config | None = None,
    calib_images: int = CALIB_IMAGES,
    log=print,
) -> ExportResult:
    """Export the pack at `pack_path` into the folder `out` (written whole or not at all).

    int8: quantize (QDQ) with this configuration, calibrated on the first `calib_images` images of `calib` (or of
    the pack's training split); the parity gate then compares the next PARITY_IMAGES images of that source (never
    one used for calibration; generated scenes where none are left). Without int8, `calib` holds the parity images.
    """
    from ssprompt.train.pack import load_pack

    from .graph import ONNX_RUNTIME_ONLY, ExportGraph
    from .pack_model import export_model

    began = time.perf_counter()
    if fp16 and int8 is not None:
        raise ExportError("--fp16 and --int8 exclude each other: an INT8 graph keeps its unquantized op types in FP32")
    if int8 is not None and layout in ONNX_RUNTIME_ONLY:
        raise ExportError(f"--int8 and --{layout} exclude each other: the INT8 graph is quantized from the standard graph")
    if int8 is not None and calib_images < 1:
        raise ExportError(f"--calib-images {calib_images}: calibrate on at least one image")
    if engine and layout in ONNX_RUNTIME_ONLY:
        raise ExportError(f"--engine: TensorRT cannot build ONNX Runtime's contrib ops (--{layout}); "
                          f"export without --{layout} for TensorRT")
    if out.exists() and not force:
        raise ExportError(f"{out}: exists; pass --force to replace it")
    if out.exists() and not (out / MODEL_FILE).is_file():
        raise ExportError(f"{out}: exists and is not an ssprompt export folder (no {MODEL_FILE}); choose another --out")
    pack = load_pack(pack_path)
    model = export_model(pack, pack_path, sam_checkpoint, clip_pretrained)
    precision = "int8" if int8 is not None else "fp16" if fp16 else "fp32"
    graph = ExportGraph(model, layout)
    metadata = graph_metadata(model, pack, pack_path, precision)
    parity_images = None
    if int8 is not None:
        from .int8 import calibration_files, calibration_set

        try:
            files, evaluation = calibration_files(calib, pack.train_config)
            calibration = calibration_set(files[:calib_images], model.image_size, model.pad_value, evaluation)
        except (ValueError, OSError) as err:
            raise ExportError(str(err)) from None
        held_out = files[calib_images:calib_images + PARITY_IMAGES]
        if held_out:
            parity_images = calibration_set(held_out, model.image_size, model.pad_value).images
        metadata = replace(metadata, calibration={"method": int8.method, **calibration.describe()})

    remove_stale_temporaries(out.parent)  # what an export killed outright left behind
    with exclusive(out, "export folder"), atomic_folder(out, MODEL_FILE) as tmp, contextlib.ExitStack() as scratch:
        onnx_model = traced_graph(graph, (file_sha256(pack_path), sam_checkpoint, clip_pretrained, layout), log)
        if int8 is not None:
            from .int8 import to_int8

            work = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="ssp-int8-")))
            fp32_path = write_model(onnx_model, work / "fp32.onnx", metadata)
            log(f"calibrating on {len(calibration.images)} images ({int8.method})")
            try:
                onnx_model, ranges, quantized = to_int8(fp32_path, work / "int8.onnx", calibration.images, int8, log)
            except Exception as err:  # noqa: BLE001 - onnxruntime.quantization raises its own types
                raise ExportError(f"INT8 quantization failed: {error_reason(err)}") from None
        elif fp16:
            log(f"converting to FP16 ({', '.join(keep_fp32) or 'nothing'} kept in FP32)")
            try:
                onnx_model = to_fp16(onnx_model, keep_fp32)
            except Exception as err:  # noqa: BLE001 - onnx raises its own checker errors
                raise ExportError(f"FP16 conversion failed: {error_reason(err)}") from None
        if layout == "ort-fused":
            from .ort_fusion import fuse_skip_layer_norms

            onnx_model, fused = fuse_skip_layer_norms(onnx_model)
            log(f"{fused} residual additions and layer norms fused (SkipLayerNormalization)")
        onnx_path = write_model(onnx_model, tmp / MODEL_FILE, metadata)
        del onnx_model

        parity = None
        if parity_gate:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                raise ExportError("the parity gate needs onnxruntime: pip install 'ssprompt[ort]' (CPU) or 'ssprompt[gpu]' "
                                  "(NVIDIA), or pass --no-parity") from None
            if parity_images is not None:
                images = parity_images
            else:
                images = calibration_images(model.image_size, model.pad_value, None if int8 is not None else calib)
            import torch

            reference_graph = graph.to("cuda" if torch.cuda.is_available() else "cpu")
            try:
                parity = check_parity(reference_graph, onnx_path, images, precision, parity_provider)
            except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
                raise ExportError(f"parity check could not run {MODEL_FILE}: {error_reason(err)}") from None
            log(parity.describe())
            if not parity.passed and int8 is not None:
                raise ExportError(_int8_failure(parity, fp32_path, ranges, quantized, int8, images, reference_graph,
                                                parity_provider, log))
            if not parity.passed:
                hint = "; --keep-fp32 can keep more op types in FP32" if fp16 else ""
                raise ExportError(f"parity gate failed: {parity.describe()}; nothing written{hint}")

        plan_path, command = None, None
        cache = timing_cache or out.with_name(out.name + ".timing.cache")
        if engine:
            onnx_sha256 = file_sha256(onnx_path)
            if tensorrt_available():
                facts = build_engine(onnx_path, tmp / PLAN_FILE, model.image_size, batch, fp16, workspace_mib, cache,
                                     onnx_sha256, log, int8=int8 is not None)
                write_sidecar(tmp / PLAN_FILE, metadata, facts)
                plan_path = out / PLAN_FILE
            else:  # the sidecar waits for build_engine.sh to record the TensorRT version and GPU it built with
                write_sidecar(tmp / PLAN_FILE, metadata, EngineFacts(PENDING, PENDING, [batch.min, batch.opt, batch.max],
                                                                     onnx_sha256))
                # The script runs in its folder, wherever that is copied: the default cache sits beside the folder there too.
                script_cache = Path("..", cache.name) if timing_cache is None else cache.resolve()
                script = tmp / BUILD_SCRIPT
                script.write_text(build_script(MODEL_FILE, PLAN_FILE, model.image_size, batch, fp16, workspace_mib, script_cache,
                                                int8 is not None))
                script.chmod(0o755)
                command = f"sh {shlex.quote(str(out / BUILD_SCRIPT))}"
                log(f"tensorrt does not import here: build the engine on the target machine with `{command}` "
                    f"(trtexec, then the build is recorded in {sidecar_path(out / PLAN_FILE).name})")

        triton_configs = []
        if triton:
            from .triton import write_triton_repository

            name = "ssprompt_" + metadata.pack_sha256[:8]
            triton_configs = write_triton_repository(
                tmp / "triton", name, onnx_path, metadata, batch.max, tmp / PLAN_FILE if plan_path else None)
        onnx_bytes = sum(p.stat().st_size for p in tmp.glob(MODEL_FILE + "*"))
        triton_configs = [out / p.relative_to(tmp) for p in triton_configs]
    return ExportResult(out, out / MODEL_FILE, parity, time.perf_counter() - began, onnx_bytes, plan_path, command,
                        triton_configs)


def _int8_failure(parity: Parity, fp32_path: Path, ranges, quantized: list[str], config: Int8Config, images: np.ndarray,
                  reference_graph, provider: str, log) -> str:
    """The INT8 gate's one line: the agreement, and the op types whose quantization alone costs the most labels."""
    from .int8 import op_type_agreement
    from .parity import torch_outputs

    log(f"int8 parity gate failed; quantizing each of {len(quantized)} op types alone to find what costs most")
    costs = op_type_agreement(fp32_path, ranges, quantized, config, images, torch_outputs(reference_graph, images), provider)
    worst = ", ".join(f"{op} ({100 * agree:.2f}% alone)" for op, agree in costs[:3])
    return (f"int8 parity gate failed: labels agree on {100 * parity.label_agreement:.2f}% of pixels "
            f"(need {100 * THRESHOLDS['int8'][0]:.0f}%); op types that cost most: {worst or 'none'}; nothing written; "
            "--keep-float can leave them unquantized")
