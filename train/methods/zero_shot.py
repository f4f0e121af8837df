"""Zero-shot: SAM's point embeddings and CLIP's class-name embeddings, unchanged; nothing learns.
`ssp-eval --default-prompts` evaluates any pack's backbones as this method."""

from __future__ import annotations

from .base import DefaultPrompts, MethodInputs, PromptSource
from .registry import Method, NoOptions, register_method

__all__ = ["ZERO_SHOT"]


def build_default_prompts(inputs: MethodInputs, options: NoOptions) -> PromptSource:
    return DefaultPrompts(inputs.default_spatial, inputs.default_semantic)


ZERO_SHOT = register_method(Method("zero-shot", "default prompts, no training", prompts=build_default_prompts))
