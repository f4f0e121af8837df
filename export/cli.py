"""ssp-export: a prompt pack → one ONNX graph (parity-gated), TensorRT engine, Triton repository."""

from __future__ import annotations

from pathlib import Path

import click

from ssprompt.runtime.options import POSITIVE, OutputFile, Parsed

from .fp16 import KEEP_FP32
from .int8 import CALIB_IMAGES, CALIBRATION_METHODS, KEEP_FLOAT
from .tensorrt import BatchRange

__all__ = ["export_command"]


def _known_op_types(text: str) -> tuple[str, ...]:
    """ONNX op types of the default domain, comma-separated (none: an empty text)."""
    import onnx

    ops = [op.strip() for op in text.split(",") if op.strip()]
    unknown = [op for op in ops if not onnx.defs.has(op)]
    if unknown:
        known = {name.casefold(): name for name in (schema.name for schema in onnx.defs.get_all_schemas())}
        hints = [f"{op} (did you mean {known[op.casefold()]}?)" if op.casefold() in known else op for op in unknown]
        raise ValueError(f"not ONNX op types: {', '.join(hints)}.")
    return tuple(dict.fromkeys(ops))


def _op_types(text: str) -> tuple[str, ...]:
    """--keep-fp32: ONNX op types of the default domain, comma-separated; KEEP_FP32's are always among them."""
    return tuple(dict.fromkeys((*KEEP_FP32, *_known_op_types(text))))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prompts", "pack", required=True, type=click.Path(dir_okay=False), help="Prompt pack (pack.pt).")
@click.option("--sam-checkpoint", type=click.Path(dir_okay=False), help="Default: the path recorded in the pack.")
@click.option("--clip-pretrained", help="Default: the tag or path recorded in the pack.")
@click.option("--out", required=True, type=OutputFile(folder=True), help="Output folder (model.onnx, ...).")
@click.option("--fp16", is_flag=True, help="FP16 graph (FP32 I/O; only the op types of --keep-fp32 compute in FP32); looser parity threshold.")
@click.option("--keep-fp32", default=",".join(KEEP_FP32), show_default=True, type=Parsed(_op_types, "op types"),
              help="With --fp16: ONNX op types that compute in FP32, comma-separated (e.g. add LayerNormalization,Softmax "
                   f"if a trained model fails the FP16 parity gate); {', '.join(KEEP_FP32)} always does (it overflows FP16).")
@click.option("--int8", is_flag=True,
              help="INT8 graph: static quantization in QDQ form (onnxruntime.quantization), per-channel weights, calibrated on "
                   "--calib or the pack's training images; parity gate on images not used for calibration.")
@click.option("--calib-images", default=CALIB_IMAGES, show_default=True, type=POSITIVE,
              help="With --int8: calibration images (the first N of --calib or of the training split).")
@click.option("--calib-method", default="minmax", show_default=True, type=click.Choice(CALIBRATION_METHODS),
              help="With --int8: onnxruntime's calibrator.")
@click.option("--keep-float", default=",".join(KEEP_FLOAT), show_default=True, type=Parsed(_known_op_types, "op types"),
              help="With --int8: ONNX op types left unquantized, comma-separated.")
@click.option("--batch", default="1:1:8", show_default=True, type=Parsed(BatchRange.parse, "MIN:OPT:MAX"),
              help="Engine / Triton batch range MIN:OPT:MAX.")
@click.option("--engine", is_flag=True, help="Build a TensorRT engine (or print the trtexec line where TensorRT is absent).")
@click.option("--triton", is_flag=True, help="Also write a Triton model repository (OUT/triton).")
@click.option("--calib", type=click.Path(file_okay=False),
              help="Images for the parity check (default: generated scenes); with --int8, the calibration images "
                   "(default: the pack's training split), the parity check taking the next 4.")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime parity gate.")
@click.option("--workspace", default=4096, show_default=True, type=POSITIVE, help="TensorRT workspace limit, MiB.")
@click.option("--timing-cache", type=OutputFile(), help="TensorRT timing cache (default: OUT.timing.cache).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--ort-attention", is_flag=True,
              help="SAM's image-encoder attention as ONNX Runtime's fused MultiHeadAttention (com.microsoft): the graph "
                   "then runs on ONNX Runtime only, not TensorRT.")
@click.option("--ort-fused", is_flag=True,
              help="Every fusion of ONNX Runtime's contrib ops that pays (all of --ort-attention, CLIP's and the decoder's "
                   "attention, SkipLayerNormalization): the fastest graph for ONNX Runtime, which alone runs it.")
def export_command(pack, sam_checkpoint, clip_pretrained, out, fp16, keep_fp32, int8, calib_images, calib_method, keep_float,
                   batch, engine, triton, calib, no_parity, workspace, timing_cache, force, ort_attention, ort_fused) -> None:
    """Bake a prompt pack into one ONNX graph: uint8 image batch in, label map out."""
    from ssprompt.runtime.files import terminate_like_interrupt
    from ssprompt.train.backbones import BackboneError
    from ssprompt.train.data.folder import DataError
    from ssprompt.train.pack import PackError

    terminate_like_interrupt()

    from .int8 import Int8Config
    from .pipeline import ExportError, export_pack

    try:
        result = export_pack(
            Path(pack), Path(out), sam_checkpoint, clip_pretrained, fp16, batch, engine, triton,
            Path(calib) if calib else None, not no_parity, force, workspace, Path(timing_cache) if timing_cache else None,
            layout="ort-fused" if ort_fused else "ort-attention" if ort_attention else "graph", keep_fp32=keep_fp32,
            int8=Int8Config(calib_method, keep_float) if int8 else None, calib_images=calib_images, log=click.echo,
        )
    except (BackboneError, DataError, PackError, ExportError, ValueError, OSError, RuntimeError) as err:
        raise click.ClickException(" ".join(str(err).split())) from None
    click.echo(f"wrote {result.onnx} ({result.onnx_bytes / 2**20:.1f} MiB) in {result.seconds:.1f} s")
    if result.engine:
        click.echo(f"wrote {result.engine}")
    for config in result.triton:
        click.echo(f"wrote {config}")
