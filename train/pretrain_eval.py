"""How well pretrained tiny backbones see the miniature world: SAM's mask from one point on each thing, and
CLIP naming crops of each colour-and-shape pair (tests/train/test_pretrain.py, benchmarks/pretrained_tiny.py).

Shapes: H x W a scene.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .pretrain import crop_around, decode_points
from .shapes import SHAPES
from .world import COLOURS, Scene, Thing, draw_things

__all__ = ["crop_accuracy", "prompted_iou", "prompted_masks"]


@torch.no_grad()
def prompted_masks(sam: nn.Module, scene: Scene) -> list[tuple[tuple[int, int], np.ndarray]]:
    """SAM's single mask for a point at each thing's most interior pixel: [((x, y), (H, W) bool mask)] in thing order."""
    image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float()  # (1, 3, S, S)
    embedding = sam.image_encoder((image - sam.pixel_mean) / sam.pixel_std)
    results = []
    for index in range(1, len(scene.things) + 1):
        ys, xs = np.nonzero(scene.instances == index)
        centre = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        logits, _ = decode_points(sam, embedding, torch.tensor([[xs[centre] + 0.5, ys[centre] + 0.5]]))  # (1, M, M)
        mask = F.interpolate(logits[None], size=scene.instances.shape, mode="bilinear")[0, 0].numpy() > 0
        results.append(((int(xs[centre]), int(ys[centre])), mask))
    return results


def prompted_iou(sam: nn.Module, scenes: list[Scene]) -> float:
    """Mean IoU, over every thing of the scenes, of `prompted_masks` against the thing's pixels."""
    ious = []
    for scene in scenes:
        for index, (_, mask) in enumerate(prompted_masks(sam, scene), start=1):
            region = scene.instances == index
            ious.append((mask & region).sum() / (mask | region).sum())
    return float(np.mean(ious))


@torch.no_grad()
def crop_accuracy(clip: nn.Module, tokenizer, rng: np.random.Generator, texture: str = "plain") -> float:
    """Top-1 accuracy of CLIP naming a crop of each colour-and-shape pair among all of them ("a photo of a ...")."""
    import open_clip

    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    crops = []
    for name in names:
        thing = Thing(*name.split(), texture, (40, 40, 44, 44))
        crops.append(crop_around(draw_things((128, 128), [thing], rng).image, thing.box, rng, 64))
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).reshape(1, 3, 1, 1)
    image_features = F.normalize(clip.encode_image((images - mean) / std), dim=-1)
    text_features = F.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
    return float(((image_features @ text_features.t()).argmax(1) == torch.arange(len(names))).float().mean())
