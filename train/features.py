"""Frozen-encoder features of a labelled folder, computed once and cached.

Shapes: E SAM's embedding width, h x w SAM's embedding grid, D CLIP's joint width, g the dense
CLIP grid, H x W a label's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ssprompt.runtime.postprocess import resize_label
from ssprompt.runtime.preprocess import letterbox

from .cache import FeatureCache
from .data.folder import SegmentationFolder
from .data.reading import read_image, read_label
from .model import SSPrompt

__all__ = ["Features", "encoder_identity", "encode_folder", "short_side_size"]


@dataclass
class Features:
    """Frozen-encoder outputs and the label of one image (optionally flipped)."""

    sam: torch.Tensor  # (E, h, w) SAM image embedding
    clip: torch.Tensor  # (D, g, g) dense CLIP features
    extent: tuple[int, int]  # (rows, cols) of the image inside the letterboxed square
    label: torch.Tensor  # (H, W) int64 class indices, at the label's size or at the training resolution


def encoder_identity(model: SSPrompt, backbones) -> dict:
    """Everything the encoders' outputs depend on besides the image: the cache's key."""
    identity = {
        **backbones.identity(),  # digests, and the names: ViT-B-16 and ViT-B-16-quickgelu share weights
        "image_size": model.image_size,
        "normalization": asdict(model.normalization()),
        "pad": list(model.pad_value),
    }
    adapter = model.encoder_adapter.identity()
    if adapter is not None:  # the plain encoder's key stays as it was: existing caches still hit
        identity["encoder_adapter"] = adapter
    return identity


def encode_folder(
    model: SSPrompt,
    folder: SegmentationFolder,
    indices: Sequence[int],
    cache: FeatureCache,
    short_side: int,
    flips: Sequence[bool] = (False,),
    progress: bool = True,
    desc: str = "encode",
) -> list[list[Features]]:
    """Run (or fetch from the cache) the frozen encoders for each chosen image and flip.

    Labels are resized (nearest) so their shorter side is `short_side`, or kept at their size with 0.

    Returns:
      One list per image, one Features per flip, in the order of `indices` and `flips`.
    """
    device = model.dense_pe.device
    grid = model.clip_dense.grid
    shapes = {"sam": tuple(model.dense_pe.shape[1:]), "clip": (model.clip_dense.embed_dim, grid, grid), "extent": (2,)}
    out: list[list[Features]] = []
    bar = tqdm(indices, desc=desc, unit="img", disable=not progress)
    for index in bar:
        sample = folder.samples[index]
        digest = cache.image_digest(sample.image)  # once per image, for every flip
        image = None  # decoded only when some flip misses the cache
        label = read_label(sample, folder.num_classes, folder.void)
        per_image: list[Features] = []
        for flip in flips:
            key = cache.key(digest, flip)
            entry = cache.load(key, shapes)
            if entry is None:
                image = read_image(sample.image) if image is None else image
                view = np.ascontiguousarray(image[:, ::-1]) if flip else image
                boxed, placement = letterbox(view, model.image_size, pad_value=model.pad_value)
                sam_emb, clip_feat = model.encode(torch.from_numpy(boxed)[None].to(device))
                entry = {"sam": sam_emb[0], "clip": clip_feat[0], "extent": torch.tensor([placement.height, placement.width])}
                cache.save(key, entry)
            flipped = np.ascontiguousarray(label[:, ::-1]) if flip else label
            if short_side > 0:
                flipped = resize_label(flipped, short_side_size(*flipped.shape, short_side))
            per_image.append(
                Features(
                    entry["sam"].to(device),
                    entry["clip"].to(device),
                    (int(entry["extent"][0]), int(entry["extent"][1])),
                    torch.from_numpy(flipped.astype(np.int64)).to(device),
                )
            )
        out.append(per_image)
        bar.set_postfix(cached=cache.hits, computed=cache.misses)
    return out


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """Size with the shorter side scaled to ``short``, aspect ratio kept.

    Arguments:
        height: input height.
        width: input width.
        short: target length of the shorter side.

    Returns:
        (H, W); the longer side is rounded half up and at least 1.
    """
    if height < 1 or width < 1 or short < 1:
        raise ValueError(f"sizes must be positive, got height={height} width={width} short={short}")
    if height <= width:
        return short, max(1, int(width * short / height + 0.5))
    return max(1, int(height * short / width + 0.5)), short
