"""SSPrompt (the paper): learnable spatial and semantic embeddings, each fused with its default by a
learnable weight (eq. 4 and 6). Its options are the ablations of the paper's Table 5.

Shapes: N spatial prompts, T tokens a prompt, E SAM's prompt width, C classes, D CLIP's joint width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..plots import plot_fusion_weights
from .base import DefaultPrompts, MethodInputs, PromptSource
from .registry import Method, option, register_method

__all__ = ["SSPromptOptions", "FusedPrompts", "fuse_prompts", "SSPROMPT"]


@dataclass
class SSPromptOptions:
    learn: str = option("both", "Ablation: which prompts learn.", choices=("both", "spatial", "semantic"))
    fixed_weights: bool = option(False, "Ablation: keep fusion weights at 0.5 (embeddings learn, weights do not).")


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


class FusedPrompts(DefaultPrompts):
    """Learnable embeddings, each fused with its default by a learnable weight (eq. 4 and 6).

    Everything starts at the defaults, with weights sigmoid(0) = 0.5. The ablations switch off
    the learning of either side, or of the weights.
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


def build_fused_prompts(inputs: MethodInputs, options: SSPromptOptions) -> PromptSource:
    return FusedPrompts(inputs.default_spatial, inputs.default_semantic, learn_spatial=options.learn in ("both", "spatial"),
                        learn_semantic=options.learn in ("both", "semantic"), learn_weights=not options.fixed_weights)


SSPROMPT = register_method(Method(
    "ssprompt", "learnable spatial and semantic prompts fused with the defaults", prompts=build_fused_prompts,
    options=SSPromptOptions, option_prefix="", plot=plot_fusion_weights))
