"""VSPL: the 2-D point of each spatial prompt learns, through SAM's frozen prompt encoder; CLIP's
default semantic prompts.

Shapes: N spatial prompts, T tokens a prompt, E SAM's prompt width, S the square input's side.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DefaultPrompts, MethodInputs, PromptSource, embed_points
from .registry import Method, NoOptions, register_method

__all__ = ["PointPrompts", "VSPL"]


class PointPrompts(DefaultPrompts):
    """Learnable point coordinates, embedded by SAM's prompt encoder at every step.

    A point is sigmoid(logit) * S on each axis: it can move anywhere on the square input and never
    gets stuck at the border, as it would behind a clamp.
    """

    def __init__(self, inputs: MethodInputs) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        self.prompt_encoder = inputs.sam.prompt_encoder
        self.image_size = inputs.image_size
        self.point_logits = nn.Parameter(torch.logit(inputs.grid_points / inputs.image_size))  # (N, 2)

    def points(self) -> torch.Tensor:
        """(N, 2) learned (x, y) pixel coordinates on the square input."""
        return torch.sigmoid(self.point_logits) * self.image_size

    def spatial(self) -> torch.Tensor:
        """(N, T, E)."""
        return embed_points(self.prompt_encoder, self.points())

    def learned(self) -> dict[str, nn.Parameter]:
        return {"point_logits": self.point_logits}


def build_point_prompts(inputs: MethodInputs, options: NoOptions) -> PromptSource:
    return PointPrompts(inputs)


VSPL = register_method(Method("vspl", "learnable point coordinates", prompts=build_point_prompts))
