"""The train and evaluate jobs behind `ssp-train`, `ssp-eval` and `ssp-demo`."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ssprompt.runtime.errors import OptionError
from ssprompt.runtime.instances import InstanceOptions, PanopticOptions
from ssprompt.runtime.palette import default_palette

from .backbones import load_backbones
from .cache import FeatureCache, default_cache_dir
from .config import ModelConfig, TrainConfig
from .data.layouts import open_folder
from .data.reading import read_instances
from .data.sampling import class_presence, sample_k_shot
from .model import SSPrompt
from .pack import Pack, PackError, build_pack, load_pack, load_pack_backbones, save_pack
from .features import encode_folder, encoder_identity
from .loop import TrainResult, train_prompts
from .methods.registry import get_method
from .metrics import InstanceScoring, evaluate

__all__ = ["pick_device", "train_pack", "model_from_pack", "evaluate_pack"]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA device here")
    return device


def _cache(config: TrainConfig, model: SSPrompt, backbones) -> FeatureCache:
    return FeatureCache(config.cache_dir or default_cache_dir(), encoder_identity(model, backbones))


def train_pack(
    model_config: ModelConfig,
    config: TrainConfig,
    out: str | Path,
    device: str = "auto",
    progress: bool = True,
    weights_plot: str | Path | None = None,
    log=print,
) -> dict:
    """Sample k shots, cache the frozen encoders' outputs, learn the prompts, write the pack.

    Returns:
      A summary: images, cache hits, seconds per phase, losses, metrics before and after.
    """
    out = Path(out)
    dev = pick_device(device)
    method = get_method(model_config.method)
    method.parse_options(model_config.method_options)  # before the data and the backbones
    began = time.perf_counter()
    folder = open_folder(config.data, config.split, config.void)
    config = replace(config, void=folder.void)  # Cityscapes fixes its own void (255)
    presence = class_presence(folder, progress=progress)
    indices = sample_k_shot(folder, config.shots, config.seed, presence)
    log(f"{len(indices)} images hold {config.shots} shots of each of {folder.num_classes} classes ({folder.location})")
    val_folder = open_folder(config.data, config.val_split, config.void) if config.val_split else None
    if val_folder is not None and val_folder.class_names != folder.class_names:
        raise PackError(f"{val_folder.location}: classes differ from {folder.location}")

    backbones = load_backbones(
        model_config.sam, model_config.clip, model_config.sam_checkpoint, model_config.clip_pretrained,
        model_config.random_weights,
    )
    model = SSPrompt(backbones, folder.class_names, model_config).to(dev)
    if model.encoder_adapter.learned():
        raise NotImplementedError(f"method {method.name}: its encoder adapter learns, and training runs on cached "
                                  "encoder outputs; encoder-in-the-loop training is not wired yet")
    cache = _cache(config, model, backbones)

    encode_began = time.perf_counter()
    flips = (False, True) if config.flip else (False,)
    items = encode_folder(model, folder, indices, cache, config.short_side, flips, progress, desc="encode shots")
    val_items = []
    if val_folder is not None:  # scored as ssp-eval scores: at each label's own size
        val_items = [f[0] for f in encode_folder(
            model, val_folder, range(len(val_folder)), cache, 0, (False,), progress, desc="encode val")]
    encode_seconds = time.perf_counter() - encode_began
    hits, misses = cache.hits, cache.misses

    before = evaluate(model, val_items, folder.num_classes, config.void) if val_items else None
    checkpoint = out.with_name(out.name + ".ckpt")
    if not model.learned():  # a method without learnables (zero-shot): the pack holds its prompts
        result = TrainResult(steps=0, resumed_from=0, losses=[], seconds=0.0)
        after = before
    else:
        result = train_prompts(model, items, config, checkpoint_path=checkpoint, progress=progress, log=log)
        after = evaluate(model, val_items, folder.num_classes, config.void) if val_items else None

    metrics = {
        "final_loss": result.losses[-1] if result.losses else None,
        "method": model_config.method,
        "val_split": config.val_split,
        # The prompts training started from: the defaults, except CoOp's initial context ("a photo of a {name}.").
        "miou_initial": before["miou"] if before else None,
        "miou": after["miou"] if after else None,
        "per_class": after["per_class"] if after else None,
    }
    pack = build_pack(model, backbones, default_palette(folder.num_classes), folder.void, asdict(config), metrics,
                      folder.thing_classes)
    save_pack(pack, out)
    checkpoint.unlink(missing_ok=True)
    if weights_plot and method.plot is None:
        log(f"nothing to plot: method {method.name} draws no picture of what it learned")
    elif weights_plot:
        method.plot(pack, weights_plot)
    return {
        "pack": str(out),
        "method": model_config.method,
        "starts_from": method.starts_from,
        "images": len(indices),
        "cache_hits": hits,
        "cache_misses": misses,
        "encode_seconds": encode_seconds,
        "train_seconds": result.seconds,
        "total_seconds": time.perf_counter() - began,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": metrics["final_loss"],
        "before": before,
        "after": after,
    }


def model_from_pack(
    pack: Pack,
    sam_checkpoint: str | None = None,
    clip_pretrained: str | None = None,
    default_prompts: bool = False,
    device: str = "auto",
    random_weights: bool | None = None,
    source: str | Path = "pack",
) -> tuple[SSPrompt, object]:
    """Rebuild the trained model from a pack and the checkpoints it was trained against.

    Checkpoints default to the paths recorded in the pack; their sha256 must match it.
    With `default_prompts`, the model is the zero-shot baseline: nothing of the pack's learning is used.
    `source` names the pack (its file) in errors.
    """
    config, backbones = load_pack_backbones(pack, source, sam_checkpoint, clip_pretrained, random_weights, default_prompts)
    model = SSPrompt(backbones, pack.class_names, config, default_semantic=pack.default_semantic)
    if not default_prompts:
        targets = model.learned()
        if set(targets) != set(pack.learned):
            raise PackError(f"{source}: a {pack.method} pack holds {', '.join(sorted(pack.learned)) or 'no learnables'}; "
                            f"its method needs {', '.join(sorted(targets)) or 'none'}")
        with torch.no_grad():
            for name, target in targets.items():
                if pack.learned[name].shape != target.shape:
                    raise PackError(f"{source}: {name} has shape {tuple(pack.learned[name].shape)}; "
                                    f"these backbones need {tuple(target.shape)}")
                target.copy_(pack.learned[name])
    return model.to(pick_device(device)), backbones


def evaluate_pack(
    pack_path: str | Path,
    data: str | Path,
    split: str | None,
    void: int | None = None,
    default_prompts: bool = False,
    sam_checkpoint: str | None = None,
    clip_pretrained: str | None = None,
    cache_dir: str = "",
    device: str = "auto",
    progress: bool = True,
    instances: bool = True,
    instance_options: InstanceOptions = InstanceOptions(),
    panoptic_options: PanopticOptions = PanopticOptions(),
) -> dict:
    """mIoU and per-class IoU of a pack (or of its backbones' default prompts) on a folder, scored on the
    label maps the exported graph gives, at each label's own size (train/metrics.py). Where the folder
    has instance maps and the pack thing classes (and `instances` is on), also mask AP and PQ / SQ / RQ
    of what the runtime's instance and panoptic post-processing make of the graph's outputs."""
    pack = load_pack(pack_path)
    void = pack.void if void is None else void
    folder = open_folder(data, split, void)
    if folder.class_names != pack.class_names:
        raise PackError(f"{folder.location}: classes {folder.class_names} differ from the pack's {pack.class_names}")
    model, backbones = model_from_pack(pack, sam_checkpoint, clip_pretrained, default_prompts, device, source=pack_path)
    cache = FeatureCache(cache_dir or default_cache_dir(), encoder_identity(model, backbones))
    items = [f[0] for f in encode_folder(model, folder, range(len(folder)), cache, 0, (False,), progress, desc="encode")]
    missing = sum(sample.instances is None for sample in folder.samples)
    scoring, note = None, None
    if instances and not pack.thing_classes:
        note = "no mask AP or PQ: the pack has no thing classes (mark them [thing] in classes.txt)"
    elif instances and missing:
        note = f"no mask AP or PQ: {missing} of {len(folder)} images have no instance map"
    elif instances:
        scoring = InstanceScoring(lambda i: read_instances(folder.samples[i]), pack.thing_classes, instance_options,
                                  panoptic_options)
    metrics = evaluate(model, items, folder.num_classes, void, progress=progress, instances=scoring)
    metrics.update({"images": len(items), "prompts": "default" if default_prompts else "learned",
                    "method": model.config.method, "data": str(folder.location)})
    if note:
        metrics["instance_note"] = note
    return metrics
