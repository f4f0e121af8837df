"""Time and host memory of one SSPrompt training step at full-size architecture (random weights).

One step on cached features (what training runs after the encoders' single pass): decoder over
B images x N prompts in checkpointed chunks, mask pooling, semantic map, loss, backward. Memory
is the process's peak resident set (VmHWM) before and after the step; the difference is the
step's activation memory. Writes a markdown table.

    python benchmarks/train_step_memory.py --out benchmarks/results/train_step_memory_cpu.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header  # noqa: E402


def main() -> None:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--chunk", type=int, default=25, help="prompts per checkpointed decoder call")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step_memory_cpu.md"))
    args = parser.parse_args()

    import torch

    from ssprompt.runtime.bench import peak_rss_mb
    from ssprompt.train.backbones import load_backbones
    from ssprompt.train.config import ModelConfig
    from ssprompt.train.model import SSPrompt
    from ssprompt.train.trainer import Features, segmentation_loss

    backbones = load_backbones(args.sam, args.clip, random_weights=True)
    config = ModelConfig(sam=args.sam, clip=args.clip, random_weights=True, num_prompts=args.prompts, decoder_chunk=args.chunk)
    model = SSPrompt(backbones, [f"class {i}" for i in range(args.classes)], config)
    del backbones
    emb = model.dense_pe.shape[1:]  # (E, h, w)
    feat = (model.clip_dense.embed_dim, model.clip_dense.grid, model.clip_dense.grid)
    side = model.image_size
    generator = torch.Generator().manual_seed(0)
    batch = [
        Features(torch.randn(*emb, generator=generator), torch.randn(*feat, generator=generator), (side * 3 // 4, side),
                 torch.randint(0, args.classes, (512, 683), generator=generator))
        for _ in range(args.batch)
    ]
    before = peak_rss_mb()
    began = time.perf_counter()
    segmentation_loss(model, batch, void=255).backward()
    seconds = time.perf_counter() - began
    after = peak_rss_mb()

    lines = header(f"One training step at full-size architecture ({args.sam} + {args.clip}, random weights)") + [
        f"Batch {args.batch} images (4:3, labels 683 x 512), {args.prompts} prompts in checkpointed chunks of {args.chunk}, "
        f"{args.classes} classes; CPU, fp32.",
        "",
        "| step s | peak RSS before MB | peak RSS after MB | step activations MB |",
        "|---|---|---|---|",
        f"| {seconds:.1f} | {before:.0f} | {after:.0f} | {after - before:.0f} |",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
