"""Configs of the model and of a training run; both are saved inside the pack as plain dicts.

`ModelConfig` holds what every method shares; a method's own options live in its options
dataclass (methods/registry.py), kept here as the dict `method_options`.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields

__all__ = ["ModelConfig", "TrainConfig", "config_from_dict"]


@dataclass
class ModelConfig:
    sam: str = "tiny"  # SAM architecture: tiny, vit_b, vit_l, vit_h
    sam_checkpoint: str | None = None  # segment-anything checkpoint file (tiny: its pretrained weights when None)
    clip: str = "tiny"  # open_clip model name, or tiny
    clip_pretrained: str | None = None  # open_clip pretrained tag or weights file (tiny: its pretrained weights when None)
    random_weights: bool = False  # seeded random backbones: full-size without weights, tiny without its pretrained ones
    method: str = "ssprompt"  # the method (methods/ registry): ssprompt, zero-shot, coop, vspl, ...
    method_options: dict = field(default_factory=dict)  # the method's own options by field name (its dataclass's)
    num_prompts: int = 100  # N spatial prompts, one per point of a sqrt(N) x sqrt(N) grid
    clip_grid: int = 0  # side of the dense CLIP feature grid; 0 = auto (about 2x CLIP's native grid)
    decoder_chunk: int = 25  # prompts per mask-decoder call; bounds activation memory

    def __post_init__(self) -> None:
        side = math.isqrt(self.num_prompts)
        if self.num_prompts < 1 or side * side != self.num_prompts:
            raise ValueError(f"num_prompts must be a perfect square (a point grid), got {self.num_prompts}")
        if self.decoder_chunk < 1:
            raise ValueError(f"decoder_chunk must be positive, got {self.decoder_chunk}")
        if not isinstance(self.method_options, dict):
            raise TypeError(f"method_options must be a dict, got {type(self.method_options).__name__}")

    @property
    def grid_side(self) -> int:
        return math.isqrt(self.num_prompts)


@dataclass
class TrainConfig:
    data: str = ""  # dataset folder
    split: str | None = "train"  # split folder to sample the k shots from
    val_split: str | None = None  # held-out split evaluated before and after training
    void: int = 255  # label value ignored in loss and metrics
    shots: int = 4  # k labelled images per class
    seed: int = 0  # k-shot sampling, flips and batch order
    epochs: int = 30  # passes over the k-shot set (each image with a random flip)
    batch_size: int = 2  # images per step
    optimizer: str = "sgd"  # sgd (paper) or adamw (scale-free steps; suits tiny random backbones)
    lr: float = 1e-3  # learning rate (paper: SGD at 1e-3)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay (paper: 1e-4)
    poly_power: float = 0.9  # lr = lr0 * (1 - step / steps) ** power
    short_side: int = 512  # labels are resized (nearest) so their shorter side is this (paper: 512)
    flip: bool = True  # random horizontal flip (paper)
    cache_dir: str = ""  # where frozen-encoder features are cached; "" = ~/.cache/ssprompt
    checkpoint_every: int = 50  # steps between resumable checkpoints

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive finite number, got {self.lr}")
        for name in ("momentum", "weight_decay", "poly_power"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 <= self.void <= 65535:
            raise ValueError(f"--void must be a label value in 0..65535, got {self.void}")
        if self.short_side < 0:
            raise ValueError(f"--short-side must be 0 (keep the labels' size) or positive, got {self.short_side}")


def _of_type(value, hint) -> bool:
    """Whether a plain value (from a pack or checkpoint) is of a config field's type: str, int, float, bool, X | None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_of_type(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def config_from_dict(cls, values: dict):
    """Rebuild a config dataclass from a saved dict, ignoring keys this version does not know.

    Raises:
      TypeError: a value not of its field's type (the message names the field).
      ValueError: a value its config refuses (__post_init__).
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kept = {k: v for k, v in values.items() if k in known}
    for name, value in kept.items():
        if not _of_type(value, hints[name]):
            expected = " or ".join(getattr(arm, "__name__", str(arm)) for arm in (typing.get_args(hints[name]) or (hints[name],)))
            raise TypeError(f"{name} is {type(value).__name__} {value!r:.40}, expected {expected.replace('NoneType', 'None')}")
    return cls(**kept)

