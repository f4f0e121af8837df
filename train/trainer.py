"""Feature caching, the training loop (resumable) and evaluation (mIoU)."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssprompt.runtime.preprocess import letterbox

from .cache import FeatureCache
from .config import TrainConfig
from .data import SegmentationFolder, read_image, read_label, resize_label, short_side_size
from .model import SSPrompt
from .pack import atomic_torch_save

__all__ = [
    "Features",
    "sam_pad_value",
    "encoder_identity",
    "encode_folder",
    "label_probabilities",
    "segmentation_loss",
    "train_prompts",
    "evaluate",
    "TrainResult",
]


def sam_pad_value(model: SSPrompt) -> tuple[int, int, int]:
    """Letterbox padding: SAM's pixel mean, so padding normalises to about zero as in SAM's own preprocessing."""
    return tuple(int(round(v)) for v in model.sam.pixel_mean.flatten().tolist())



@dataclass
class Features:
    """Frozen-encoder outputs and the label of one image (optionally flipped)."""

    sam: torch.Tensor  # Ex(h)x(w) SAM image embedding
    clip: torch.Tensor  # Dxgxg dense CLIP features
    extent: tuple[int, int]  # (rows, cols) of the image inside the letterboxed square
    label: torch.Tensor  # HxW int64 class indices at training resolution


def encoder_identity(model: SSPrompt, backbones) -> dict:
    return {
        **backbones.identity(),  # digests, and the names: ViT-B-16 and ViT-B-16-quickgelu share weights
        "image_size": model.image_size,
        "clip_input_size": model.clip_input_size,
        "clip_mean": model.clip_mean.flatten().tolist(),
        "clip_std": model.clip_std.flatten().tolist(),
        "pad": list(sam_pad_value(model)),
    }


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

    Returns:
      One list per image, one Features per flip, in the order of `indices` and `flips`.
    """
    device = model.dense_pe.device
    pad = sam_pad_value(model)
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
                boxed, placement = letterbox(view, model.image_size, pad_value=pad)
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


def label_probabilities(semantic: torch.Tensor, extent: tuple[int, int], image_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Resample a semantic map from the letterboxed square onto the image's label grid.

    Bilinear sampling of the valid (unpadded) region only, at the centres of the label's
    pixels; one grid_sample, equivalent to upsampling, cropping and resizing.

    Arguments:
      semantic (torch.Tensor): CxMxM class probabilities over the square model input.
      extent (tuple): (rows, cols) of the image inside the square, in input pixels.
      image_size (int): side of the square input.
      size (tuple): (H, W) of the label.

    Returns:
      (torch.Tensor): CxHxW class probabilities.
    """
    height, width = size
    device = semantic.device
    # Label pixel centres as fractions of the square, then grid_sample's [-1, 1] (align_corners=False).
    ys = (torch.arange(height, device=device) + 0.5) / height * (extent[0] / image_size) * 2 - 1
    xs = (torch.arange(width, device=device) + 0.5) / width * (extent[1] / image_size) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    return F.grid_sample(semantic[None], grid[None], mode="bilinear", align_corners=False)[0]


def segmentation_loss(model: SSPrompt, batch: Sequence[Features], void: int) -> torch.Tensor:
    """Per-pixel cross-entropy on log S over the batch's labelled pixels, void pixels ignored."""
    sam = torch.stack([f.sam for f in batch])
    clip = torch.stack([f.clip for f in batch])
    semantic = model(sam, clip).semantic  # (B, C, m, m)
    total, pixels = semantic.new_zeros(()), 0
    for probs, feats in zip(semantic, batch):
        at_label = label_probabilities(probs, feats.extent, model.image_size, tuple(feats.label.shape))
        total = total + F.nll_loss(at_label.clamp_min(1e-8).log()[None], feats.label[None], ignore_index=void, reduction="sum")
        pixels += int((feats.label != void).sum())
    return total / max(pixels, 1)  # an all-void batch gives 0, not NaN


@torch.no_grad()
def evaluate(model: SSPrompt, items: Sequence[Features], num_classes: int, void: int, batch_size: int = 4, progress: bool = False) -> dict:
    """mIoU over the classes that occur in labels or predictions; per-class IoU (None when absent)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", disable=not progress):
        batch = items[start:start + batch_size]
        semantic = model(torch.stack([f.sam for f in batch]), torch.stack([f.clip for f in batch])).semantic
        for probs, feats in zip(semantic, batch):
            pred = label_probabilities(probs, feats.extent, model.image_size, tuple(feats.label.shape)).argmax(0)
            valid = feats.label != void
            pairs = feats.label[valid] * num_classes + pred[valid]
            confusion += torch.bincount(pairs.cpu(), minlength=num_classes**2).reshape(num_classes, num_classes)
    return metrics_from_confusion(confusion, model.class_names)


def metrics_from_confusion(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    true_positive = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - true_positive
    per_class = {}
    for name, tp, u in zip(class_names, true_positive.tolist(), union.tolist()):
        per_class[name] = tp / u if u > 0 else None
    present = [v for v in per_class.values() if v is not None]
    total = confusion.sum().item()
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "pixel_accuracy": true_positive.sum().item() / total if total else 0.0,
        "pixels": int(total),
    }


@dataclass
class TrainResult:
    steps: int  # optimiser steps taken in total
    resumed_from: int  # step the run resumed at (0 for a fresh run)
    losses: list[float]  # loss of every step of this run
    seconds: float  # training time of this run (cached features; encoders excluded)


def _fingerprint(config: TrainConfig, model: SSPrompt, items: Sequence[Sequence[Features]]) -> dict:
    """What a checkpoint must match to be resumed: settings, classes, and the training data itself."""
    keep = {k: v for k, v in asdict(config).items() if k not in ("cache_dir", "checkpoint_every")}
    digest = hashlib.sha256()
    for per_flip in items:
        for f in per_flip:  # labels and a slice of each embedding identify images and backbones
            digest.update(f.label.cpu().numpy().tobytes())
            digest.update(f.sam.flatten()[:256].cpu().numpy().tobytes())
            digest.update(f.clip.flatten()[:256].cpu().numpy().tobytes())
    return {"train": keep, "model": asdict(model.config), "classes": list(model.class_names), "data": digest.hexdigest()}


def train_prompts(
    model: SSPrompt,
    items: Sequence[Sequence[Features]],
    config: TrainConfig,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    log=print,
) -> TrainResult:
    """SGD with a poly schedule over the cached k-shot features; resumes from `checkpoint_path`.

    Arguments:
      items: one entry per image, holding its Features per flip (a random flip is drawn each epoch).
    """
    params = model.learnable_parameters()
    if not params:
        raise ValueError("nothing to learn: both spatial and semantic learning are switched off")
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd or adamw")
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, total) / total) ** config.poly_power)
    fingerprint = _fingerprint(config, model, items)

    start = 0
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt is not None and ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - cut short by the interrupt itself, or not ours: start over
            state = {}
        if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
            log(f"{ckpt}: not resumable (other settings, data or backbones, or damaged); starting afresh")
        else:
            with torch.no_grad():
                for name in model.prompt_names:
                    model.get_parameter(name).copy_(state["learnables"][name])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])

    def save_checkpoint(step: int) -> None:
        if ckpt is None:
            return
        atomic_torch_save(
            {
                "fingerprint": fingerprint,
                "step": step,
                "learnables": {n: model.get_parameter(n).detach().cpu().clone() for n in model.prompt_names},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            ckpt,
        )

    losses: list[float] = []
    began = time.perf_counter()
    bar = tqdm(range(start, total), desc="train", unit="step", initial=start, total=total, disable=not progress)
    for step in bar:
        epoch, within = divmod(step, steps_per_epoch)
        # The order of an epoch depends only on (seed, epoch): a resumed run replays it exactly.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(items), generator=generator).tolist()
        flips = torch.randint(0, len(items[0]), (len(items),), generator=generator).tolist()
        chosen = order[within * config.batch_size:(within + 1) * config.batch_size]
        batch = [items[i][flips[i]] for i in chosen]

        loss = segmentation_loss(model, batch, void=config.void)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(step + 1)
    save_checkpoint(total)
    return TrainResult(total, start, losses, time.perf_counter() - began)
