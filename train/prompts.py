"""Prompt sources: where SAM's decoder gets its spatial prompts and the mask classifier its semantic ones.

SSPrompt and every baseline is one prompt source, built by name from a registry, as timm builds
models. A new method plugs in here and nowhere else:

    @register_prompt_source("mine")
    def build_mine(inputs: SourceInputs) -> PromptSource:
        return MyPrompts(inputs.default_spatial, inputs.default_semantic)

A source returns the prompts and names its learnable tensors as packs and checkpoints store
them (`learned`): names of the file format, independent of attribute paths.

Shapes: N spatial prompts (one per grid point), T tokens a prompt, E SAM's prompt width,
C classes, D CLIP's joint embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .baselines import CoOpTextEncoder, embed_points
from .config import ModelConfig

__all__ = ["SourceInputs", "PromptSource", "PROMPT_SOURCES", "register_prompt_source", "build_prompt_source",
           "fuse_prompts", "DefaultPrompts", "FusedPrompts", "ContextPrompts", "PointPrompts"]


@dataclass
class SourceInputs:
    """What a builder may use."""

    default_spatial: torch.Tensor  # (N, T, E) SAM's prompt-encoder output for the grid points
    default_semantic: torch.Tensor  # (C, D) CLIP's class-name embeddings over the 80 ImageNet templates
    grid_points: torch.Tensor  # (N, 2) (x, y) pixels of the points on the square input
    image_size: int  # S, the side of the square input
    prompt_encoder: nn.Module  # SAM's frozen prompt encoder
    clip: nn.Module  # CLIP with its text tower (frozen)
    tokenizer: Callable  # CLIP's tokenizer
    class_names: list[str]
    config: ModelConfig


class PromptSource(nn.Module):
    """(N, T, E) spatial prompts for SAM's decoder and (C, D) semantic prompts for the mask classifier."""

    def spatial(self) -> torch.Tensor:
        raise NotImplementedError

    def semantic(self) -> torch.Tensor:
        raise NotImplementedError

    def learned(self) -> dict[str, nn.Parameter]:
        """The learnable tensors by the names packs and checkpoints store them under (trainable or not)."""
        return {}


PROMPT_SOURCES: dict[str, Callable[[SourceInputs], PromptSource]] = {}


def register_prompt_source(name: str) -> Callable:
    """Decorator: `builder(inputs) -> PromptSource` becomes the method `name` (ssp-train --method NAME)."""
    def register(builder: Callable[[SourceInputs], PromptSource]) -> Callable[[SourceInputs], PromptSource]:
        PROMPT_SOURCES[name] = builder
        return builder

    return register


def build_prompt_source(name: str, inputs: SourceInputs) -> PromptSource:
    if name not in PROMPT_SOURCES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(PROMPT_SOURCES)}")
    return PROMPT_SOURCES[name](inputs)


def fuse_prompts(learned: torch.Tensor, default: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Paper eq. 4 and 6: Z = w * z_learned + (1 - w) * z_default, with w = sigmoid(logit).

    Arguments:
      learned (torch.Tensor): (K, ...) learnable prompts (K prompts or classes).
      default (torch.Tensor): (K, ...) default prompts, same shape.
      logit (torch.Tensor): (K,) weight logits, one a prompt or class.

    Returns:
      (torch.Tensor): (K, ...) fused prompts.
    """
    weight = torch.sigmoid(logit).reshape(-1, *([1] * (learned.dim() - 1)))
    return weight * learned + (1 - weight) * default


class DefaultPrompts(PromptSource):
    """The zero-shot prompts: SAM's point embeddings and CLIP's class-name embeddings, unchanged."""

    def __init__(self, default_spatial: torch.Tensor, default_semantic: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("default_spatial", default_spatial.clone(), persistent=False)  # (N, T, E)
        self.register_buffer("default_semantic", default_semantic.clone(), persistent=False)  # (C, D)

    def spatial(self) -> torch.Tensor:
        return self.default_spatial

    def semantic(self) -> torch.Tensor:
        return self.default_semantic


class FusedPrompts(DefaultPrompts):
    """SSPrompt: learnable embeddings, each fused with its default by a learnable weight (eq. 4 and 6).

    Everything starts at the defaults, with weights sigmoid(0) = 0.5. The ablations of the
    paper's Table 5 switch off the learning of either side, or of the weights.
    """

    def __init__(self, default_spatial: torch.Tensor, default_semantic: torch.Tensor, learn_spatial: bool = True,
                 learn_semantic: bool = True, learn_weights: bool = True) -> None:
        super().__init__(default_spatial, default_semantic)
        self.spatial_embedding = nn.Parameter(default_spatial.clone(), requires_grad=learn_spatial)  # (N, T, E)
        self.spatial_weight_logit = nn.Parameter(torch.zeros(default_spatial.shape[0]), requires_grad=learn_spatial and learn_weights)
        self.semantic_embedding = nn.Parameter(default_semantic.clone(), requires_grad=learn_semantic)  # (C, D)
        self.semantic_weight_logit = nn.Parameter(torch.zeros(default_semantic.shape[0]),
                                                  requires_grad=learn_semantic and learn_weights)

    def spatial(self) -> torch.Tensor:
        return fuse_prompts(self.spatial_embedding, self.default_spatial, self.spatial_weight_logit)

    def semantic(self) -> torch.Tensor:
        return fuse_prompts(self.semantic_embedding, self.default_semantic, self.semantic_weight_logit)

    def learned(self) -> dict[str, nn.Parameter]:
        return {"spatial_embedding": self.spatial_embedding, "spatial_weight_logit": self.spatial_weight_logit,
                "semantic_embedding": self.semantic_embedding, "semantic_weight_logit": self.semantic_weight_logit}


class ContextPrompts(DefaultPrompts):
    """CoOp: learnable context vectors before each class name, through CLIP's frozen text tower at every
    step (baselines.CoOpTextEncoder); SAM's default spatial prompts."""

    def __init__(self, inputs: SourceInputs) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        config = inputs.config
        self.text = CoOpTextEncoder(inputs.clip, inputs.tokenizer, inputs.class_names, config.coop_init, config.coop_context)

    def semantic(self) -> torch.Tensor:
        return self.text()

    def learned(self) -> dict[str, nn.Parameter]:
        return {"context": self.text.context}


class PointPrompts(DefaultPrompts):
    """VSPL: the 2-D point of each prompt learns, through SAM's frozen prompt encoder; CLIP's default semantic prompts.

    A point is sigmoid(logit) * S on each axis: it can move anywhere on the square input and never
    gets stuck at the border, as it would behind a clamp.
    """

    def __init__(self, inputs: SourceInputs) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        self.prompt_encoder = inputs.prompt_encoder
        self.image_size = inputs.image_size
        self.point_logits = nn.Parameter(torch.logit(inputs.grid_points / inputs.image_size))  # (N, 2)

    def points(self) -> torch.Tensor:
        """(N, 2) learned (x, y) pixel coordinates on the square input."""
        return torch.sigmoid(self.point_logits) * self.image_size

    def spatial(self) -> torch.Tensor:
        return embed_points(self.prompt_encoder, self.points())

    def learned(self) -> dict[str, nn.Parameter]:
        return {"point_logits": self.point_logits}


@register_prompt_source("ssprompt")
def build_ssprompt(inputs: SourceInputs) -> PromptSource:
    c = inputs.config
    return FusedPrompts(inputs.default_spatial, inputs.default_semantic, c.learn_spatial, c.learn_semantic, c.learn_weights)


@register_prompt_source("zero-shot")
def build_zero_shot(inputs: SourceInputs) -> PromptSource:
    return DefaultPrompts(inputs.default_spatial, inputs.default_semantic)


@register_prompt_source("coop")
def build_coop(inputs: SourceInputs) -> PromptSource:
    return ContextPrompts(inputs)


@register_prompt_source("vspl")
def build_vspl(inputs: SourceInputs) -> PromptSource:
    return PointPrompts(inputs)
