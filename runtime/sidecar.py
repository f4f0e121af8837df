"""A TensorRT engine's sidecar (`model.plan.json`): the graph's metadata and what the engine was built with.

ssp-export writes it beside the plan in the contract's form (runtime/contract.py). Where it builds the
engine itself, the engine facts are complete. Where TensorRT is absent it writes the facts known at
export (batch range, the ONNX graph's sha256) with the TensorRT version and the GPU left empty, and
`build_engine.sh` completes them on the machine that ran trtexec:

    python -m ssprompt.runtime.sidecar model.plan model.onnx

The runner refuses an engine whose sidecar is missing, incomplete, or names another TensorRT or GPU.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .contract import EngineFacts, GraphMetadata
from .errors import ModelError, SSPromptError, one_line
from .files import file_sha256, write_text_atomic
from .gpu import UNKNOWN_GPU, gpu_name
from .images import error_reason

__all__ = ["sidecar_path", "write_sidecar", "read_sidecar", "check_sidecar", "complete_sidecar", "PENDING", "SIDECAR_MODULE"]

PENDING = ""  # tensorrt_version and gpu of an engine that trtexec has yet to build
SIDECAR_MODULE = "ssprompt.runtime.sidecar"  # completes a sidecar after trtexec: python -m SIDECAR_MODULE PLAN ONNX
COMPLETE_COMMAND = f"python -m {SIDECAR_MODULE}"


def sidecar_path(plan: Path) -> Path:
    """model.plan -> model.plan.json"""
    return plan.with_suffix(plan.suffix + ".json")


def write_sidecar(plan: Path, metadata: GraphMetadata, facts: EngineFacts) -> Path:
    """The graph's metadata with `facts` as JSON beside `plan` (written whole or not at all)."""
    path = sidecar_path(plan)
    write_text_atomic(path, json.dumps(replace(metadata, engine=facts).encode(), indent=2))
    return path


def read_sidecar(plan: Path) -> GraphMetadata:
    """The metadata beside `plan`, with engine facts (possibly pending).

    Raises:
      ModelError: no sidecar, not JSON, or not an engine sidecar of this version (the message names the file).
    """
    path = sidecar_path(plan)
    if not path.is_file():
        raise ModelError(f"{path}: missing; ssp-export --engine writes it beside the engine (with trtexec: "
                         f"ssp-export writes it and build_engine.sh completes it)")
    try:
        raw = json.loads(path.read_text())
        meta = GraphMetadata.decode(raw) if isinstance(raw, dict) else None
    except (OSError, ValueError) as err:  # MetadataError is a ValueError
        raise ModelError(f"{path}: not a readable sidecar ({error_reason(err)})") from None
    if meta is None or meta.engine is None:
        raise ModelError(f"{path}: not an ssprompt engine sidecar of this version (no engine facts); "
                         "export it again with ssp-export --engine")
    return meta


def check_sidecar(plan: Path, facts: EngineFacts, tensorrt_version: str, gpu: str | None) -> None:
    """Refuse an engine whose build was never recorded, or that was built with another TensorRT or on another GPU."""
    if facts.tensorrt_version == PENDING or facts.gpu == PENDING:
        raise ModelError(f"{sidecar_path(plan)}: the engine's build is not recorded; build it with build_engine.sh "
                         f"(its last line, {COMPLETE_COMMAND} {plan.name} model.onnx, records it)")
    gpu = gpu or UNKNOWN_GPU
    if facts.tensorrt_version != tensorrt_version or facts.gpu != gpu:
        raise ModelError(
            f"{plan}: built with TensorRT {facts.tensorrt_version} on {facts.gpu}, this is TensorRT {tensorrt_version} on "
            f"{gpu}; rebuild it here with ssp-export --engine (or build_engine.sh)"
        )


def complete_sidecar(plan: Path, onnx_path: Path, tensorrt_version: str, gpu: str | None) -> EngineFacts:
    """Record in `plan`'s sidecar that trtexec built it from `onnx_path` with `tensorrt_version` on `gpu`.

    Raises:
      ModelError: no plan, no sidecar, or an ONNX graph other than the one exported with the sidecar.
    """
    if not plan.is_file() or plan.stat().st_size == 0:
        raise ModelError(f"{plan}: no engine here; run trtexec first (build_engine.sh)")
    meta = read_sidecar(plan)
    assert meta.engine is not None  # read_sidecar refuses a sidecar without facts
    if file_sha256(onnx_path) != meta.engine.onnx_sha256:
        raise ModelError(f"{onnx_path}: not the graph {sidecar_path(plan).name} was exported with (sha256 differs); "
                         "export it again")
    facts = replace(meta.engine, tensorrt_version=tensorrt_version, gpu=gpu or UNKNOWN_GPU)
    write_sidecar(plan, meta, facts)
    return facts


def main(argv: list[str] | None = None) -> int:
    """`python -m ssprompt.runtime.sidecar PLAN ONNX`: complete PLAN's sidecar on the machine that built it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(f"usage: {COMPLETE_COMMAND} PLAN ONNX", file=sys.stderr)
        return 2
    plan, onnx_path = Path(args[0]), Path(args[1])
    try:
        import tensorrt

        facts = complete_sidecar(plan, onnx_path, tensorrt.__version__, gpu_name())
    except ImportError:
        print(f"{plan}: the tensorrt package does not import here (pip install 'ssprompt[tensorrt]')", file=sys.stderr)
        return 1
    except (SSPromptError, OSError) as err:  # OSError: the plan or graph unreadable; it names the file
        print(one_line(err), file=sys.stderr)
        return 1
    print(f"{sidecar_path(plan)}: TensorRT {facts.tensorrt_version} on {facts.gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
