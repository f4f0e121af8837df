"""SAM's mask decoder for N prompts alone: FLOPs and ONNX Runtime time, SAM's layout against the graph's.

The decoder of every SAM size (E = 256, a 64 x 64 embedding, two-way transformer), seeded random
weights and prompts. Each layout is traced to ONNX as the export traces it (legacy exporter,
onnxslim) and run on ONNX Runtime; its mask logits are compared with SAM's decoder in PyTorch FP32.

- sam:   `export.graph.SamLayoutDecoder` (`train.decoder.decode_masks`: the embedding copied for every prompt)
- graph: `export.prompt_decoder.PromptDecoder`, what the export ships

    python benchmarks/decoder_cost.py --out benchmarks/results/decoder_cost_cpu.md
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table_lines, write_report  # noqa: E402

COLUMNS = ["layout", "precision", "GFLOP per image", "batch", "p50 ms", "images/s", "max abs mask logit error", "provider"]


def layouts(prompts: int, chunk: int, grid: int) -> dict[str, nn.Module]:
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    from ssprompt.export.graph import SamLayoutDecoder
    from ssprompt.export.prompt_decoder import PromptDecoder

    torch.manual_seed(0)
    decoder = MaskDecoder(transformer_dim=256, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)).eval()
    pe = PositionEmbeddingRandom(128)((grid, grid)).unsqueeze(0)  # (1, E, h, w)
    dense = torch.randn(1, 256, 1, 1).expand(1, 256, grid, grid).contiguous()  # (1, E, h, w)
    sparse = torch.randn(prompts, 2, 256)  # (N, 2, E): a point and SAM's padding token, each prompt
    return {"sam": SamLayoutDecoder(decoder, pe, dense, sparse).eval(),
            "graph": PromptDecoder(decoder, pe, dense, sparse, chunk).eval()}


def gflop(module: nn.Module, embeddings: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(embeddings)
    return counter.get_total_flops() / 1e9 / embeddings.shape[0]


def onnx_models(module: nn.Module, grid: int, precisions: list[str]) -> dict[str, bytes]:
    """precision -> the module traced once (one image; the batch axis dynamic in and out), FP16 by the export's own pass.

    The outputs' batch axis must be declared too: traced on one image, the graph layout's masks would keep a fixed
    batch of 1, and ONNX Runtime refuses a larger batch with "invalid dimensions for output".
    """
    from ssprompt.export.fp16 import to_fp16
    from ssprompt.export.onnx_export import simplify

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's and the tracer's, as export/onnx_export.py does
        torch.onnx.export(module, (torch.zeros(1, 256, grid, grid),), buffer, input_names=["embeddings"],
                          output_names=["masks", "iou"], opset_version=17, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in ("embeddings", "masks", "iou")})
    model = simplify(onnx.load_from_string(buffer.getvalue()))
    return {p: (to_fp16(model) if p == "fp16" else model).SerializeToString() for p in precisions}


def time_onnx(model: bytes, embeddings: np.ndarray, provider: str, warmup: int,
              iters: int) -> tuple[list[float], np.ndarray, str]:
    """Seconds of each timed call, the masks, and the provider that ran. On a GPU the outputs stay there."""
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=providers)
    ran = session.get_providers()[0]
    binding = session.io_binding()
    binding.bind_cpu_input("embeddings", embeddings)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda" if ran == "CUDAExecutionProvider" else "cpu")
    seconds = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds, binding.copy_outputs_to_cpu()[0], ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=25, help="prompts the graph layout decodes together")
    parser.add_argument("--grid", type=int, default=64, help="side of the image embedding (SAM: 64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precisions", default="fp32", help="fp32,fp16")
    parser.add_argument("--provider", default="cpu", help="cpu or cuda")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decoder_cost_cpu.md"))
    args = parser.parse_args()

    modules = layouts(args.prompts, args.chunk, args.grid)
    embeddings = torch.randn(args.batch, 256, args.grid, args.grid, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = modules["sam"](embeddings)[0].numpy()  # (B, N, 4h, 4w)
    rows = []
    for name, module in modules.items():
        flops = gflop(module, embeddings[:1])
        print(f"{name}: export", flush=True)
        for precision, model in onnx_models(module, args.grid, args.precisions.split(",")).items():
            print(f"{name} {precision}: run", flush=True)
            seconds, masks, ran = time_onnx(model, embeddings.numpy(), args.provider, args.warmup, args.iters)
            p50 = statistics.median(seconds)
            error = float(np.abs(masks.astype(np.float32) - reference).max())
            rows.append([name, precision, f"{flops:.2f}", args.batch, f"{1e3 * p50:.1f}", f"{args.batch / p50:.2f}",
                         f"{error:.2e}", ran])
    lines = header(f"SAM's mask decoder for {args.prompts} prompts alone: SAM's layout against the graph's") + [
        "",
        f"Decoder of every SAM size (E 256, {args.grid} x {args.grid} embedding), seeded random weights and prompts; "
        f"graph layout in groups of {args.chunk} prompts. Traced to ONNX as the export traces it (opset 17, onnxslim; "
        f"FP16 by export/fp16.py), ONNX Runtime with outputs left where they were computed, {args.warmup} warm-up and "
        f"{args.iters} timed calls. FLOPs: torch.utils.flop_counter on one image. Error: against SAM's layout in "
        "PyTorch FP32.",
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
