"""ssp-pretrain: pretrain the `tiny` SAM and CLIP on the miniature world (train/world.py).

SAM learns class-agnostic promptable segmentation as SAM is trained: a point on an object (or on
the background) → that region's mask, with a per-pixel + dice mask loss and an MSE on its IoU
estimate. SAM's per-pixel term is focal; here it is plain binary cross-entropy, because from
scratch (no MAE-pretrained encoder) the focal run settled on empty masks within 100 steps. CLIP learns contrastively: object crops, background crops and whole scenes against
captions of colour, shape and texture written in CLIP's ImageNet templates; captions naming the
same thing are positives of each other. Every image is generated on the fly from the seed.

Reproducible: the same seed, thread count and torch build give bit-identical weights (CPU
kernels are deterministic for a fixed thread count; a different count may reorder sums).

Shapes: B scenes, P points a scene, S SAM's input side, M its mask side, K captions in a batch.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
import click

from ssprompt.runtime.options import POSITIVE, SEED, OutputFile, reported_errors
from tqdm import tqdm

from .world import Thing, caption, draw_things, pretraining_scene

__all__ = ["PretrainConfig", "crop_around", "decode_points", "pretrain", "pretrain_clip", "pretrain_command", "pretrain_sam"]


@dataclass
class PretrainConfig:
    seed: int = 0  # seeds the scenes, the initial weights and the batch order
    threads: int = 2  # torch CPU threads; part of what makes a run reproducible
    sam_steps: int = 2600  # optimiser steps for SAM
    sam_scenes: int = 8  # B scenes a SAM step
    sam_points: int = 6  # P point prompts a scene
    sam_lr: float = 3e-4  # AdamW peak learning rate (linear warm-up, cosine decay); 1e-3 collapsed to empty masks
    clip_steps: int = 1400  # optimiser steps for CLIP
    clip_scenes: int = 16  # scenes a CLIP step; each gives its crops, a background crop and itself
    clip_lr: float = 1e-3  # AdamW peak learning rate


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _sam_batch(rng: np.random.Generator, config: PretrainConfig, side: int, mask_side: int):
    """Scenes, one point a prompt inside a random region, and that region's mask.

    Returns:
      (torch.Tensor): (B, 3, S, S) float images, 0..255.
      (torch.Tensor): (B, P, 2) point (x, y) in pixels.
      (torch.Tensor): (B, P, M, M) target masks (block-averaged, so soft at edges).
      (torch.Tensor): (B, 1, M, M) where targets count (away from the void rings).
    """
    images, points, targets, valid = [], [], [], []
    block = side // mask_side
    for _ in range(config.sam_scenes):
        scene = pretraining_scene(rng, (side, side))
        images.append(scene.image)
        regions = [scene.instances == i for i in range(len(scene.things) + 1)]  # 0: background, as SAM's "stuff" masks
        regions = [r for r in regions if r.any()]
        for _ in range(config.sam_points):
            region = regions[int(rng.integers(len(regions)))]
            ys, xs = np.nonzero(region)
            pick = int(rng.integers(len(ys)))
            points.append((xs[pick] + 0.5, ys[pick] + 0.5))
            targets.append(region.reshape(mask_side, block, mask_side, block).mean((1, 3)))
        valid.append((scene.instances >= 0).reshape(mask_side, block, mask_side, block).mean((1, 3)) > 0.99)
    b, p = config.sam_scenes, config.sam_points
    return (
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(),
        torch.tensor(np.array(points), dtype=torch.float32).reshape(b, p, 2),
        torch.from_numpy(np.stack(targets)).float().reshape(b, p, mask_side, mask_side),
        torch.from_numpy(np.stack(valid)).float().unsqueeze(1),
    )


def _mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + dice over valid pixels; (P, M, M) each → scalar."""
    pixel = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum((-2, -1)) / valid.sum((-2, -1))
    prob = logits.sigmoid() * valid
    dice = 1 - (2 * (prob * target).sum((-2, -1)) + 1) / (prob.sum((-2, -1)) + (target * valid).sum((-2, -1)) + 1)
    return (pixel + dice).mean()


def decode_points(sam: nn.Module, embedding: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's single mask for each point on one image.

    Arguments:
      embedding (torch.Tensor): (1, E, h, w) the image's embedding.
      points (torch.Tensor): (P, 2) (x, y) in pixels of SAM's input.

    Returns:
      (torch.Tensor): (P, M, M) mask logits.
      (torch.Tensor): (P,) IoU estimates.
    """
    sparse, dense = sam.prompt_encoder(points=(points[:, None, :], torch.ones(points.shape[0], 1)), boxes=None, masks=None)
    logits, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=False)  # (P, 1, M, M), (P, 1)
    return logits[:, 0], iou[:, 0]


def pretrain_sam(config: PretrainConfig, progress: bool = True) -> tuple[nn.Module, list[float]]:
    """Train the tiny SAM from its seeded initialisation; returns it (train mode off) and the losses."""
    from .backbones import SAM_BUILDERS, seeded_build

    torch.manual_seed(config.seed)
    sam = seeded_build(SAM_BUILDERS["tiny"])
    side = sam.image_encoder.img_size
    mask_side = 4 * sam.prompt_encoder.image_embedding_size[0]
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.sam_lr, weight_decay=0.01)
    schedule = _schedule(optimizer, config.sam_steps)
    rng = np.random.default_rng([config.seed, 1])
    losses = []
    sam.train()
    bar = tqdm(range(config.sam_steps), desc="pretrain SAM", disable=not progress)
    for _ in bar:
        images, points, targets, valid = _sam_batch(rng, config, side, mask_side)
        embeddings = sam.image_encoder((images - sam.pixel_mean) / sam.pixel_std)  # (B, E, h, w)
        loss = 0.0
        for i in range(images.shape[0]):
            logits, iou = decode_points(sam, embeddings[i:i + 1], points[i])  # (P, M, M), (P,)
            target, keep = (targets[i] > 0.5).float(), valid[i]
            with torch.no_grad():
                hard = (logits > 0).float() * keep
                actual = (hard * target).sum((-2, -1)) / ((hard + target * keep).clamp(max=1)).sum((-2, -1)).clamp(min=1)
            loss = loss + _mask_losses(logits, target, keep) + F.mse_loss(iou, actual)
        loss = loss / images.shape[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return sam.eval(), losses


def _templates() -> list[str]:
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def crop_around(image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator, side: int) -> np.ndarray:
    """A square crop around a box, the box filling 40-90 % of its side, resized to side x side."""
    x0, y0, w, h = box
    height, width = image.shape[:2]
    span = min(max(w, h) / rng.uniform(0.4, 0.9), height, width)
    cx, cy = x0 + w / 2 + rng.uniform(-0.1, 0.1) * span, y0 + h / 2 + rng.uniform(-0.1, 0.1) * span
    left, top = np.clip(cx - span / 2, 0, width - span), np.clip(cy - span / 2, 0, height - span)  # inside the image
    region = (left, top, left + span, top + span)
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR, box=region))


def _scene_words(things: list[Thing]) -> str:
    names = sorted({t.name for t in things})
    if not names:  # every thing hidden to a sliver
        return "background"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _clip_batch(rng: np.random.Generator, config: PretrainConfig, side: int, templates: list[str]):
    """Images and captions: every visible thing's crop, one background crop and the whole scene, per scene.

    Returns:
      (torch.Tensor): (K, 3, side, side) float images, 0..1.
      (list[str]): K captions (templates filled in).
      (torch.Tensor): (K,) concept ids: equal ids are positives of each other.
    """
    images, captions = [], []
    for _ in range(config.clip_scenes):
        scene = pretraining_scene(rng, (128, 128))
        for thing in scene.things:
            images.append(crop_around(scene.image, thing.box, rng, side))
            words = caption(thing) if rng.random() < 0.5 else thing.name
            captions.append(words)
        empty = draw_things((side, side), [], rng)
        images.append(empty.image)
        captions.append("background")
        images.append(np.asarray(Image.fromarray(scene.image).resize((side, side), Image.BILINEAR)))
        captions.append(_scene_words(scene.things))
    ids = {words: i for i, words in enumerate(sorted(set(captions)))}
    concepts = torch.tensor([ids[words] for words in captions])
    filled = [templates[int(rng.integers(len(templates)))].format(words) for words in captions]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0, filled, concepts


def pretrain_clip(config: PretrainConfig, progress: bool = True) -> tuple[nn.Module, list[float]]:
    """Train the tiny CLIP contrastively from its seeded initialisation; returns it and the losses."""
    import open_clip

    from .backbones import build_clip

    torch.manual_seed(config.seed)
    clip, tokenizer, _ = build_clip("tiny", random_weights=True)  # the seeded random init, frozen
    clip.requires_grad_(True)
    side = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    preprocess = getattr(clip.visual, "preprocess_cfg", None) or {}
    mean = torch.tensor(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)).reshape(1, 3, 1, 1)
    std = torch.tensor(preprocess.get("std", open_clip.OPENAI_DATASET_STD)).reshape(1, 3, 1, 1)
    optimizer = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=config.clip_lr, weight_decay=0.05)
    schedule = _schedule(optimizer, config.clip_steps)
    rng = np.random.default_rng([config.seed, 2])
    templates = _templates()
    losses = []
    clip.train()
    bar = tqdm(range(config.clip_steps), desc="pretrain CLIP", disable=not progress)
    for _ in bar:
        images, captions, concepts = _clip_batch(rng, config, side, templates)
        image_features = F.normalize(clip.encode_image((images - mean) / std), dim=-1)  # (K, D)
        text_features = F.normalize(clip.encode_text(tokenizer(captions)), dim=-1)  # (K, D)
        logits = clip.logit_scale.exp() * image_features @ text_features.t()  # (K, K)
        positives = (concepts[:, None] == concepts[None, :]).float()
        targets = positives / positives.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return clip.eval(), losses


def pretrain(config: PretrainConfig, out: str | Path, progress: bool = True, log=print) -> dict:
    """Pretrain both backbones and write them to `out` (tiny_sam.pt, tiny_clip.pt, tiny.json).

    SAM is stored in float32, CLIP in float16 (its 49408-token embedding alone is 12.6 MB in
    float32); `tiny.json` records each file's sha256, the config, the losses and the time taken.
    """
    from ssprompt.runtime.files import write_text_atomic

    from .backbones import TINY_WEIGHT_FILES, file_sha256, weights_sha256
    from .pack import atomic_torch_save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    record: dict = {"config": asdict(config), "torch": torch.__version__, "machine": platform.machine()}
    for name, train in (("sam", pretrain_sam), ("clip", pretrain_clip)):
        began = time.perf_counter()
        model, losses = train(config, progress)
        state = {k: (v.half() if name == "clip" and v.is_floating_point() else v).contiguous()
                 for k, v in model.state_dict().items()}
        path = out / TINY_WEIGHT_FILES[name]
        atomic_torch_save(state, path)
        record[name] = {"file": path.name, "sha256": file_sha256(path), "weights_sha256": weights_sha256(model),
                        "seconds": round(time.perf_counter() - began, 1), "first_loss": losses[0],
                        "final_loss": float(np.mean(losses[-20:])), "bytes": path.stat().st_size}
        log(f"{name}: {record[name]['seconds']} s, loss {losses[0]:.3f} → {record[name]['final_loss']:.3f}, "
            f"{path} ({record[name]['bytes'] / 2**20:.1f} MiB, sha256 {record[name]['sha256'][:12]})")
    write_text_atomic(out / "tiny.json", json.dumps(record, indent=2) + "\n")
    return record


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="pretrained", show_default=True, type=OutputFile(folder=True),
              help="Folder for tiny_sam.pt, tiny_clip.pt and tiny.json (the shipped ones: ssprompt/train/weights).")
@click.option("--seed", default=PretrainConfig.seed, show_default=True, type=SEED)
@click.option("--threads", default=PretrainConfig.threads, show_default=True, type=POSITIVE, help="torch CPU threads; the same count reproduces the same weights.")
@click.option("--sam-steps", default=PretrainConfig.sam_steps, show_default=True, type=POSITIVE)
@click.option("--clip-steps", default=PretrainConfig.clip_steps, show_default=True, type=POSITIVE)
@click.option("--quiet", is_flag=True)
def pretrain_command(out, seed, threads, sam_steps, clip_steps, quiet) -> None:
    """Pretrain the tiny SAM and CLIP on the miniature world (about 20 minutes on 2 CPU cores)."""
    from ssprompt.runtime.files import terminate_like_interrupt

    terminate_like_interrupt()
    config = PretrainConfig(seed=seed, threads=threads, sam_steps=sam_steps, clip_steps=clip_steps)
    with reported_errors():
        pretrain(config, out, progress=not quiet, log=click.echo)
