"""The model export traces, built from a pack alone: the backbones the pack names (checked by sha256) around the
prompts it baked in.

Export never rebuilds the prompt source that trained the pack, nor recomputes its prompts (CoOp's would rerun
CLIP's text tower): the pack is the hand-off. The method's other parts (encoder adapter, decoding) come from its
registered module, so a pack of a method this ssprompt does not know is refused.

Shapes: N spatial prompts, T tokens a prompt, E SAM's prompt width, C classes, D CLIP's joint width.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssprompt.train.methods.base import Decoding, EncoderAdapter
from ssprompt.train.model import SSPrompt
from ssprompt.train.pack import Pack, PackError, load_pack_backbones

__all__ = ["BakedPrompts", "export_model"]


class BakedPrompts(nn.Module):
    """A pack's prompts as fixed buffers, in float32 (a pack may hold float16): the prompts the graph bakes in."""

    def __init__(self, spatial: torch.Tensor, semantic: torch.Tensor) -> None:
        """
        Arguments:
          spatial (torch.Tensor): (N, T, E) what SAM's decoder gets.
          semantic (torch.Tensor): (C, D) what the mask classifier gets (not normalised).
        """
        super().__init__()
        self.register_buffer("spatial_prompts", spatial.detach().float().clone())
        self.register_buffer("semantic_prompts", semantic.detach().float().clone())

    def spatial(self) -> torch.Tensor:
        """(N, T, E)."""
        return self.spatial_prompts

    def semantic(self) -> torch.Tensor:
        """(C, D)."""
        return self.semantic_prompts

    def learned(self) -> dict[str, nn.Parameter]:
        return {}  # nothing learns in an exported model


def export_model(pack: Pack, source: str | Path, sam_checkpoint: str | None = None,
                 clip_pretrained: str | None = None) -> SSPrompt:
    """The pack's backbones (checkpoints default to the paths it records) around its baked prompts, on the CPU.

    Raises:
      BackboneError: checkpoints whose sha256 differs from the pack's.
      PackError: prompts that do not fit the backbones, or a method that changes SAM's encoder or decoding (one line
        naming `source`).
    """
    config, backbones = load_pack_backbones(pack, source, sam_checkpoint, clip_pretrained)
    prompts = BakedPrompts(pack.spatial_prompts, pack.semantic_prompts)
    model = SSPrompt(backbones, pack.class_names, config, default_semantic=pack.default_semantic.float(), prompts=prompts)
    # The graph traces SAM's own encoder and one decoder pass; a method that changes either would export wrong.
    if type(model.encoder_adapter) is not EncoderAdapter or type(model.decoding) is not Decoding:
        raise PackError(f"{source}: method {pack.method!r} changes SAM's encoder or its decoding, which this export "
                        f"does not bake into the graph yet")
    return model
