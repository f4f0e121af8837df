"""ssp-export: a prompt pack → one ONNX graph (parity-gated), TensorRT engine, Triton repository."""

from __future__ import annotations

from pathlib import Path

import click

from .fp16 import KEEP_FP32

__all__ = ["export_command"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prompts", "pack", required=True, type=click.Path(dir_okay=False), help="Prompt pack (pack.pt).")
@click.option("--sam-checkpoint", type=click.Path(dir_okay=False), help="Default: the path recorded in the pack.")
@click.option("--clip-pretrained", help="Default: the tag or path recorded in the pack.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (model.onnx, ...).")
@click.option("--fp16", is_flag=True, help="FP16 graph (FP32 I/O; only the op types of --keep-fp32 compute in FP32); looser parity threshold.")
@click.option("--keep-fp32", default=",".join(KEEP_FP32), show_default=True,
              help="With --fp16: ONNX op types that compute in FP32, comma-separated (e.g. add LayerNormalization,Softmax "
                   "if a trained model fails the FP16 parity gate).")
@click.option("--batch", default="1:1:8", show_default=True, help="Engine / Triton batch range MIN:OPT:MAX.")
@click.option("--engine", is_flag=True, help="Build a TensorRT engine (or print the trtexec line where TensorRT is absent).")
@click.option("--triton", is_flag=True, help="Also write a Triton model repository (OUT/triton).")
@click.option("--calib", type=click.Path(file_okay=False), help="Images for the parity check (default: generated scenes).")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime parity gate.")
@click.option("--workspace", default=4096, show_default=True, help="TensorRT workspace limit, MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache (default: OUT.timing.cache).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--ort-attention", is_flag=True,
              help="SAM's image-encoder attention as ONNX Runtime's fused MultiHeadAttention (com.microsoft): the graph "
                   "then runs on ONNX Runtime only, not TensorRT.")
@click.option("--ort-fused", is_flag=True,
              help="Every fusion of ONNX Runtime's contrib ops that pays (all of --ort-attention, CLIP's and the decoder's "
                   "attention, SkipLayerNormalization): the fastest graph for ONNX Runtime, which alone runs it.")
def export_command(pack, sam_checkpoint, clip_pretrained, out, fp16, keep_fp32, batch, engine, triton, calib, no_parity,
                   workspace, timing_cache, force, ort_attention, ort_fused) -> None:
    """Bake a prompt pack into one ONNX graph: uint8 image batch in, label map out."""
    from ssprompt.runtime.files import terminate_like_interrupt
    from ssprompt.train.backbones import BackboneError
    from ssprompt.train.data import DataError
    from ssprompt.train.pack import PackError

    terminate_like_interrupt()

    from .pipeline import ExportError, export_pack
    from .tensorrt import BatchRange

    try:
        result = export_pack(
            Path(pack), Path(out), sam_checkpoint, clip_pretrained, fp16, BatchRange.parse(batch), engine, triton,
            Path(calib) if calib else None, not no_parity, force, workspace, Path(timing_cache) if timing_cache else None,
            layout="ort-fused" if ort_fused else "ort-attention" if ort_attention else "graph",
            keep_fp32=tuple(op for op in keep_fp32.split(",") if op),
            log=click.echo,
        )
    except (BackboneError, DataError, PackError, ExportError, ValueError, OSError, RuntimeError) as err:
        raise click.ClickException(" ".join(str(err).split())) from None
    click.echo(f"wrote {result.onnx} ({result.onnx_bytes / 2**20:.1f} MiB) in {result.seconds:.1f} s")
    if result.engine:
        click.echo(f"wrote {result.engine}")
    for config in result.triton:
        click.echo(f"wrote {config}")
