"""What the pretrained tiny backbones can do: SAM's prompted-mask IoU and CLIP's crop naming, against
the seeded random models, on held-out scenes of the miniature world (clean, and the task's shifted ones).

    python benchmarks/pretrained_tiny.py --out benchmarks/results/pretrained_tiny.md

Writes the table and a picture (same name, .png): task scenes with the mask SAM gives for a point
on each thing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table_lines, write_plot, write_report  # noqa: E402

TINTS = [(255, 255, 255), (255, 0, 255), (0, 255, 255), (255, 128, 0), (0, 0, 0), (128, 255, 0), (255, 0, 0)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=24, help="held-out scenes of each kind")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrained_tiny.md"))
    return parser.parse_args()


def main() -> None:
    from ssprompt.train.backbones import build_clip, build_sam, shipped_tiny_weights
    from ssprompt.train.pretrain_eval import crop_accuracy, prompted_iou, prompted_masks
    from ssprompt.train.world import TEXTURES, pretraining_scene, task_scene

    args = parse_args()
    # Seeds apart from pretraining's ([seed, 1] and [seed, 2] streams), so every scene is held out.
    clean = [pretraining_scene(np.random.default_rng([7001, i])) for i in range(args.scenes)]
    shifted = [task_scene(np.random.default_rng([7002, i]), (256, 256)) for i in range(args.scenes)]
    rows = []
    models = {}
    for label, random_weights in (("pretrained", False), ("random", True)):
        sam, _ = build_sam("tiny", random_weights=random_weights)
        clip, tokenizer, _ = build_clip("tiny", random_weights=random_weights)
        models[label] = sam
        rows.append([label, f"{prompted_iou(sam, clean):.3f}", f"{prompted_iou(sam, shifted):.3f}",
                     *(f"{crop_accuracy(clip, tokenizer, np.random.default_rng(7003), t):.2f}" for t in TEXTURES)])
    record = json.loads((shipped_tiny_weights("sam").parent / "tiny.json").read_text(encoding="utf-8"))

    lines = header("The pretrained tiny SAM and CLIP on held-out scenes of the miniature world") + [
        "",
        f"Weights: `ssp-pretrain` (train/pretrain.py), config {record['config']}, torch {record['torch']}; "
        f"SAM {record['sam']['seconds']:.0f} s (loss {record['sam']['first_loss']:.2f} → {record['sam']['final_loss']:.2f}), "
        f"CLIP {record['clip']['seconds']:.0f} s (loss {record['clip']['first_loss']:.2f} → {record['clip']['final_loss']:.2f}).",
        "",
        f"SAM: mean IoU of the single mask for a point at each thing's most interior pixel ({args.scenes} clean scenes as "
        f"pretraining draws them; {args.scenes} of the task's shifted scenes, clutter included). CLIP: top-1 accuracy "
        "naming a crop of each of the 15 colour-and-shape pairs among all 15 (\"a photo of a red disc.\"), chance 0.07.",
        "",
    ]
    lines += table_lines(["weights", "SAM IoU, clean", "SAM IoU, shifted",
                          *(f"CLIP accuracy, {t}" for t in TEXTURES)], rows)
    write_report(args.out, lines)

    pictures = shifted[:4]

    def draw(*axes) -> None:
        for ax, scene in zip(axes, pictures):
            overlay = scene.image.astype(np.float32)
            for index, ((x, y), mask) in enumerate(prompted_masks(models["pretrained"], scene)):
                overlay[mask] = 0.45 * overlay[mask] + 0.55 * np.array(TINTS[index % len(TINTS)], dtype=np.float32)
                ax.plot(x, y, "w+", markersize=6)
            ax.imshow(overlay.astype(np.uint8))
            ax.set_axis_off()

    write_plot(args.out.with_suffix(".png"), draw, "pretrained tiny SAM: one point per thing (+), its mask tinted",
               panels=len(pictures), size=(12, 3.4))


if __name__ == "__main__":
    main()
