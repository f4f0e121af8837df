"""What a method may change, as four small interfaces; each base class is today's behaviour, the default.

(a) `PromptSource`: the spatial prompts SAM's decoder gets and the semantic prompts the mask
    classifier gets (`DefaultPrompts`: SAM's point embeddings and CLIP's class-name embeddings).
(b) `EncoderAdapter`: how SAM's image encoder runs (e.g. LoRA); the default runs it unchanged.
(c) `Decoding`: how SAM's mask decoder runs over the prompts (e.g. self-prompting iterations);
    the default is one pass.
(d) `ExtraLoss`: a term added to the training loss (e.g. self-distillation); the default adds none.

Every part is an `nn.Module`, so it moves with the model, and names what it learns in `learned()`:
the names packs and checkpoints store the tensors under, independent of attribute paths. A
method's builders make its parts from `MethodInputs` and its options (registry.py).

The interfaces are plain methods, not `forward`: the defaults add no module call, so a traced or
exported graph is the same as without them.

Shapes: B images, N spatial prompts, T tokens a prompt, E SAM's prompt width, h x w SAM's embedding
grid, M = 4h the mask side, C classes, D CLIP's joint embedding width, S the square input's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from ..config import ModelConfig

if TYPE_CHECKING:
    from ..features import Features
    from ..model import Prediction, SSPrompt

__all__ = ["MethodInputs", "PromptSource", "DefaultPrompts", "EncoderAdapter", "Decoding", "ExtraLoss", "embed_points",
           "default_encoder_adapter", "default_decoding", "default_extra_loss"]


@dataclass
class MethodInputs:
    """What a method's builders may use."""

    default_spatial: torch.Tensor  # (N, T, E) SAM's prompt-encoder output for the grid points
    default_semantic: torch.Tensor  # (C, D) CLIP's class-name embeddings over the 80 ImageNet templates
    grid_points: torch.Tensor  # (N, 2) (x, y) pixels of the points on the square input
    image_size: int  # S, the side of the square input
    sam: nn.Module  # SAM (frozen): image_encoder, prompt_encoder, mask_decoder
    clip: nn.Module  # CLIP with its text tower (frozen)
    tokenizer: Callable  # CLIP's tokenizer
    class_names: list[str]
    config: ModelConfig


def embed_points(prompt_encoder: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """SAM's sparse prompt embeddings of one foreground point per prompt (differentiable in `points`).

    Arguments:
      prompt_encoder (nn.Module): segment_anything PromptEncoder.
      points (torch.Tensor): (N, 2) (x, y) pixel coordinates on the square model input.

    Returns:
      (torch.Tensor): (N, T, E), T = 2 (the point and SAM's padding token).
    """
    labels = torch.ones(points.shape[0], 1, device=points.device)
    sparse, _ = prompt_encoder(points=(points[:, None, :], labels), boxes=None, masks=None)
    return sparse


class _Part(nn.Module):
    def learned(self) -> dict[str, nn.Parameter]:
        """The learnable tensors by the names packs and checkpoints store them under (trainable or not)."""
        return {}


class PromptSource(_Part):
    """(a) (N, T, E) spatial prompts for SAM's decoder and (C, D) semantic prompts for the mask classifier."""

    def spatial(self) -> torch.Tensor:
        raise NotImplementedError

    def semantic(self) -> torch.Tensor:
        raise NotImplementedError


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


class EncoderAdapter(_Part):
    """(b) How SAM's image encoder runs; this default runs SAM's frozen encoder unchanged.

    An adapter that changes the embeddings also names itself in `identity()`, so the feature
    cache keeps its outputs apart from the plain encoder's. Training runs on cached encoder
    outputs, so an adapter that learns needs encoder-in-the-loop training (not wired yet:
    train_pack refuses it).
    """

    def encode(self, image_encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, E, h, w) SAM image embeddings."""
        return image_encoder(pixels)

    def identity(self) -> dict | None:
        """What the embeddings depend on besides SAM's weights (a feature-cache key), or None: the plain encoder."""
        return None


class Decoding(_Part):
    """(c) How SAM's mask decoder runs over the spatial prompts; this default is one pass, SAM's
    no-mask dense prompt for every prompt (`SSPrompt.decode`). The exported graph bakes in this
    default."""

    def decode(self, model: SSPrompt, sam_embeddings: torch.Tensor, spatial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E, h, w) embeddings and (N, T, E) prompts -> (B, N, M, M) mask logits and (B, N) IoU."""
        return model.decode(sam_embeddings, spatial)


class ExtraLoss(_Part):
    """(d) A term added to the per-pixel cross-entropy of training (loop.py); this default adds none."""

    def loss(self, model: SSPrompt, prediction: Prediction, batch: Sequence[Features]) -> torch.Tensor | None:
        """A scalar added to the loss of the batch, or None."""
        return None


def default_encoder_adapter(inputs: MethodInputs, options: Any) -> EncoderAdapter:
    return EncoderAdapter()


def default_decoding(inputs: MethodInputs, options: Any) -> Decoding:
    return Decoding()


def default_extra_loss(inputs: MethodInputs, options: Any) -> ExtraLoss:
    return ExtraLoss()
