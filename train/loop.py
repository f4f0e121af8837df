"""The training loop: per-pixel cross-entropy on the semantic map (plus the method's extra loss term,
none by default), SGD or AdamW with a poly schedule, resumable from a checkpoint.

The loss compares the semantic map with each label at the label's own resolution, by sampling
the map at the label's pixel centres (`label_probabilities`).

Shapes: B images, C classes, M the semantic map's side, S the square input's side, H x W a label's size.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssprompt.runtime.errors import OptionError

from .config import TrainConfig
from .features import Features
from .model import SSPrompt
from .pack import PackError, atomic_torch_save, load_tensors, tensor_problem

__all__ = ["label_probabilities", "segmentation_loss", "train_prompts", "TrainResult"]


def label_probabilities(semantic: torch.Tensor, extent: tuple[int, int], image_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Resample a semantic map from the letterboxed square onto the image's label grid.

    Bilinear sampling of the valid (unpadded) region only, at the centres of the label's
    pixels; one grid_sample, equivalent to upsampling, cropping and resizing.

    Arguments:
      semantic (torch.Tensor): (C, M, M) class probabilities over the square model input.
      extent (tuple): (rows, cols) of the image inside the square, in input pixels.
      image_size (int): side of the square input.
      size (tuple): (H, W) of the label.

    Returns:
      (torch.Tensor): (C, H, W) class probabilities.
    """
    height, width = size
    device = semantic.device
    # Label pixel centres as fractions of the square, then grid_sample's [-1, 1] (align_corners=False).
    ys = (torch.arange(height, device=device) + 0.5) / height * (extent[0] / image_size) * 2 - 1
    xs = (torch.arange(width, device=device) + 0.5) / width * (extent[1] / image_size) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    # "border" replicates the edge as F.interpolate does, so a sample half a pixel outside the map is not darkened.
    return F.grid_sample(semantic[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]


def segmentation_loss(model: SSPrompt, batch: Sequence[Features], void: int) -> torch.Tensor:
    """Per-pixel cross-entropy on log S over the batch's labelled pixels, void pixels ignored, plus the
    method's extra loss term (methods/base.py ExtraLoss; none by default)."""
    sam = torch.stack([f.sam for f in batch])
    clip = torch.stack([f.clip for f in batch])
    prediction = model(sam, clip)
    semantic = prediction.semantic  # (B, C, M, M)
    total, pixels = semantic.new_zeros(()), 0
    for probs, feats in zip(semantic, batch):
        at_label = label_probabilities(probs, feats.extent, model.image_size, tuple(feats.label.shape))
        total = total + F.nll_loss(at_label.clamp_min(1e-8).log()[None], feats.label[None], ignore_index=void, reduction="sum")
        pixels += int((feats.label != void).sum())
    loss = total / max(pixels, 1)  # an all-void batch gives 0, not NaN
    extra = model.extra_loss.loss(model, prediction, batch)
    return loss if extra is None else loss + extra


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
    learned = {name: list(p.shape) for name, p in model.learned().items()}  # the names the checkpoint stores
    return {"train": keep, "model": asdict(model.config), "classes": list(model.class_names), "learned": learned,
            "data": digest.hexdigest()}


def _resume_problem(state, fingerprint: dict, model: SSPrompt, total: int) -> str | None:
    """Why a checkpoint cannot be resumed, or None: the same fingerprint, a step within the run, every
    learnable tensor valid and of its parameter's shape (pack.tensor_problem), the optimiser's and
    scheduler's states."""
    if not isinstance(state, dict):
        return "not a checkpoint"
    if state.get("fingerprint") != fingerprint:
        return "other settings, data or backbones"
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= total:
        return f"step {str(step)[:20]} is not in 0..{total}"
    learnables = state.get("learnables")
    targets = model.learned()
    if not isinstance(learnables, dict) or set(learnables) != set(targets):
        return "its learnables are not this model's"
    for name, parameter in targets.items():
        problem = tensor_problem(learnables[name], tuple(parameter.shape))
        if problem:
            return f"learnable {name} {problem}"
    for name in ("optimizer", "scheduler"):
        if not isinstance(state.get(name), dict):
            return f"no {name} state"
    return None


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
        raise OptionError(f"nothing to learn: method {model.config.method} has no trainable tensor with these options")
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
        try:  # the same loader and tensor checks as a pack's
            state = load_tensors(ckpt, PackError, "checkpoint")
            problem = _resume_problem(state, fingerprint, model, total)
        except PackError as err:  # cut short by the interrupt itself, or not ours
            problem = str(err).removeprefix(f"{ckpt}: ")
        if problem is None:
            saved = {name: p.detach().clone() for name, p in model.learned().items()}
            try:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                with torch.no_grad():
                    for name, parameter in model.learned().items():
                        parameter.copy_(state["learnables"][name])
                start = state["step"]
            except (KeyError, ValueError, TypeError, RuntimeError) as err:  # torch's own checks of the states
                with torch.no_grad():
                    for name, parameter in model.learned().items():
                        parameter.copy_(saved[name])
                optimizer.state.clear()
                problem = f"optimizer or scheduler state does not fit ({' '.join(str(err).split())[:80]})"
        if problem is not None:
            log(f"{ckpt}: not resumable ({problem}); starting afresh")

    def save_checkpoint(step: int) -> None:
        if ckpt is None:
            return
        atomic_torch_save(
            {
                "fingerprint": fingerprint,
                "step": step,
                "learnables": {n: p.detach().cpu().clone() for n, p in model.learned().items()},
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
        if not torch.isfinite(loss):
            raise OptionError(f"training diverged: loss {loss.item()} at step {step + 1} of {total}; nothing written "
                              f"(lower --lr, now {config.lr:g})")
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
