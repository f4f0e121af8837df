"""A method from outside the package, in one file: `scaled`, with two options of its own.

Its semantic prompts are CLIP's class-name embeddings times a learnable scale that starts at
--scale-init (and stays there with --freeze-semantic); its spatial prompts are SAM's plus a
learnable offset. Importing this module registers it; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssprompt.train.methods.base import DefaultPrompts, MethodInputs, PromptSource
from ssprompt.train.methods.registry import Method, option, register_method


@dataclass
class ScaledOptions:
    scale_init: float = option(1.0, "Initial scale of the semantic prompts.", min=0.0)
    freeze_semantic: bool = option(False, "Keep the semantic scale at its initial value.")


class ScaledPrompts(DefaultPrompts):
    def __init__(self, inputs: MethodInputs, options: ScaledOptions) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        self.scale = nn.Parameter(torch.tensor(options.scale_init), requires_grad=not options.freeze_semantic)
        self.spatial_offset = nn.Parameter(torch.zeros_like(inputs.default_spatial))

    def spatial(self) -> torch.Tensor:
        return self.default_spatial + self.spatial_offset

    def semantic(self) -> torch.Tensor:
        return self.scale * self.default_semantic

    def learned(self) -> dict[str, nn.Parameter]:
        return {"scale": self.scale, "spatial_offset": self.spatial_offset}


def build_scaled_prompts(inputs: MethodInputs, options: ScaledOptions) -> PromptSource:
    return ScaledPrompts(inputs, options)


SCALED = register_method(Method("scaled", "a scaled semantic side", prompts=build_scaled_prompts, options=ScaledOptions,
                                option_prefix=""))
