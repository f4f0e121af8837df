"""Training cost per image (paper Table 9): SSPrompt with the encoder cache, SSPrompt with the
encoders in the loop, and CoOp, at full-size architecture (SAM ViT-B + CLIP ViT-B/16, random weights).

One optimiser step is what each method pays per batch of training images:
- SSPrompt, cached encoders (what `ssp-train` runs): SAM's decoder over B images x N prompts in
  checkpointed chunks, mask pooling, semantic map, loss, backward to the four prompt tensors.
- SSPrompt, encoders in the loop: the same step after running SAM's and CLIP's frozen image
  encoders on the step's images (a training loop without the cache).
- CoOp, as CoOp trains: the frozen image encoders on the step's images, the learnable context
  through CLIP's text tower forward and backward; the decoder runs without gradients (CoOp's
  spatial prompts do not learn).
- CoOp, cached encoders: not in the paper; what the cache alone would buy CoOp.
Each variant runs in its own process, so its peak memory is its own. Time and memory do not
depend on weight values. Writes a markdown table and a bar chart (same name, .png).

    python benchmarks/train_efficiency.py --steps 2 --out benchmarks/results/train_efficiency_cpu.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, run_in_worker, table_lines, write_plot  # noqa: E402

from ssprompt.runtime.files import write_text_atomic  # noqa: E402
from ssprompt.train.config import ModelConfig  # noqa: E402

# id -> (row label, method, encoders run in every step)
VARIANTS = {
    "ssprompt-cached": ("SSPrompt, cached encoders", "ssprompt", False),
    "ssprompt-encoders": ("SSPrompt, encoders in the loop", "ssprompt", True),
    "coop-encoders": ("CoOp (encoders in the loop, as CoOp trains)", "coop", True),
    "coop-cached": ("CoOp, cached encoders", "coop", False),
}
REFERENCE = "coop-encoders"  # the paper's ratios are against CoOp


def parse_args():
    parser = fullsize_parser(__doc__)
    parser.add_argument("--batch", type=int, default=2, help="images per step (the training default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_efficiency_cpu.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one variant
    parser.add_argument("--result", help=argparse.SUPPRESS)  # internal: where the worker writes its JSON
    return parser.parse_args()


def measure(args, variant: str) -> dict:
    """Build the model, run warm-up and timed steps of one variant; time and peak memory."""
    import torch

    from ssprompt.runtime.memory import peak_rss_mb, reset_peak_rss, rss_mb
    from ssprompt.train.backbones import load_backbones
    from ssprompt.train.model import SSPrompt
    from ssprompt.train.features import Features
    from ssprompt.train.loop import segmentation_loss

    _, method, in_loop = VARIANTS[variant]
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    backbones = load_backbones(args.sam, args.clip, random_weights=True)
    config = ModelConfig(sam=args.sam, clip=args.clip, random_weights=True, num_prompts=args.prompts, method=method)
    model = SSPrompt(backbones, [f"class {i}" for i in range(args.classes)], config).to(device)
    del backbones
    optimizer = torch.optim.SGD(model.learnable_parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)  # the paper's

    generator = torch.Generator().manual_seed(0)
    side = model.image_size
    images = torch.randint(0, 256, (args.batch, side, side, 3), dtype=torch.uint8, generator=generator).to(device)
    labels = [torch.randint(0, args.classes, (512, 683), generator=generator).to(device) for _ in range(args.batch)]
    extent = (side * 3 // 4, side)  # a 4:3 image letterboxed into the square
    grid = model.clip_dense.grid
    cached = (  # what the cache holds for the batch: only the shapes matter for time and memory
        torch.randn(args.batch, *model.dense_pe.shape[1:], generator=generator).to(device),
        torch.randn(args.batch, model.clip_dense.embed_dim, grid, grid, generator=generator).to(device),
    )
    encoder_seconds: list[float] = []

    def step() -> None:
        began = now()
        sam, clip = model.encode(images) if in_loop else cached
        encoder_seconds.append(now() - began)
        loss = segmentation_loss(model, [Features(sam[i], clip[i], extent, labels[i]) for i in range(args.batch)], void=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    encoder_seconds.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    resident = rss_mb()
    step_seconds = []
    for _ in range(args.steps):
        began = now()
        step()
        step_seconds.append(now() - began)
    return {
        "variant": variant,
        "ms_per_image": 1e3 * sum(step_seconds) / len(step_seconds) / args.batch,
        "encoder_ms_per_image": 1e3 * sum(encoder_seconds) / len(encoder_seconds) / args.batch if in_loop else None,
        "resident_mb": resident,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    }


def run_worker(variant: str, argv: list[str], work: Path) -> dict:
    """`measure` in a fresh process (its own peak memory); returns its JSON."""
    result, error = run_in_worker(Path(__file__).resolve(), [*argv, "--worker", variant, "--result", str(work / f"{variant}.json")],
                                  work / f"{variant}.json")
    if result is None:
        raise SystemExit(f"{variant} failed: {error}")
    return result


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{100 * (value / reference - 1):+.0f} %"


def main() -> None:
    args = parse_args()
    from ssprompt.train.pipeline import pick_device

    try:
        args.device = pick_device(args.device).type
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.worker:
        Path(args.result).write_text(json.dumps(measure(args, args.worker)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    argv = [f"--{name}={getattr(args, name)}" for name in ("sam", "clip", "prompts", "classes", "batch", "warmup", "steps", "device")]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="train-efficiency-") as work:
        for variant in variants:
            began = time.perf_counter()
            rows[variant] = run_worker(variant, argv, Path(work))
            print(f"{VARIANTS[variant][0]}: {rows[variant]['ms_per_image']:.0f} ms/image, peak RSS "
                  f"{rows[variant]['peak_rss_mb']:.0f} MB ({time.perf_counter() - began:.0f} s)", flush=True)

    gpu = args.device == "cuda"
    memory_key = "gpu_peak_mb" if gpu else "peak_rss_mb"
    reference = rows.get(REFERENCE)
    lines = header(f"Training cost per image ({args.sam} SAM + {args.clip} CLIP, random weights), {args.device}")
    lines += [
        f"Batch {args.batch} images (4:3, labels 683 x 512), {args.prompts} spatial prompts (SSPrompt decoder in "
        f"checkpointed chunks of {ModelConfig.decoder_chunk}), {args.classes} classes, SGD; mean of {args.steps} steps after {args.warmup} "
        f"warm-up. Peak memory: {'torch.cuda.max_memory_allocated' if gpu else 'the process peak resident set (VmHWM), reset before the timed steps'}; "
        "the step's own memory is that peak minus what was resident before the steps (weights, cached features). "
        "Ratios are against CoOp as it trains (paper Table 9: SSPrompt -36 % time, -53 % memory against CoOp).",
        "",
    ]
    columns = ["variant", "ms / training image", "of which encoders", f"peak {'GPU' if gpu else 'RSS'} MB"]
    if not gpu:
        columns.append("step memory MB")
    columns += ["time vs CoOp", "peak memory vs CoOp"]
    table = []
    for variant, row in rows.items():
        encoders = "n/a (cached)" if row["encoder_ms_per_image"] is None else f"{row['encoder_ms_per_image']:.0f}"
        cells = [VARIANTS[variant][0], f"{row['ms_per_image']:.0f}", encoders, f"{row[memory_key]:.0f}"]
        if not gpu:
            cells.append(f"{row['peak_rss_mb'] - row['resident_mb']:.0f}")
        cells += [ratio(row["ms_per_image"], reference and reference["ms_per_image"]),
                  ratio(row[memory_key], reference and reference[memory_key])]
        table.append(cells)
    lines += table_lines(columns, table)
    write_text_atomic(args.out, "\n".join(lines) + "\n")

    labels = [VARIANTS[v][0].split(" (")[0] for v in rows]

    def draw(ax_time, ax_memory) -> None:
        ax_time.barh(labels, [r["ms_per_image"] / 1e3 for r in rows.values()], color="#4c72b0")
        ax_time.set_xlabel("s per training image")
        ax_time.invert_yaxis()
        ax_memory.barh(labels, [r[memory_key] / 1024 for r in rows.values()], color="#dd8452")
        ax_memory.set_xlabel(f"peak {'GPU' if gpu else 'host'} memory, GB")
        ax_memory.invert_yaxis()
        ax_memory.set_yticklabels([])

    write_plot(args.out.with_suffix(".png"), draw, f"Training cost, {args.sam} + {args.clip}, {args.device}", panels=2,
               size=(9, 3))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
