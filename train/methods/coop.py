"""CoOp: one learnable context, shared by all classes, before each class name, through CLIP's frozen
text tower at every step; SAM's default spatial prompts.

Shapes: C classes, L CLIP's text length, W CLIP's text width, M context vectors, D CLIP's joint
embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ssprompt.runtime.errors import OptionError

from ..backbones import BackboneError
from .base import DefaultPrompts, MethodInputs, PromptSource
from .registry import Method, option, register_method

__all__ = ["CoOpOptions", "CoOpTextEncoder", "ContextPrompts", "COOP"]

_CONTEXT_SEED = 0
DEFAULT_CONTEXT = 16  # random context vectors M when none is given


@dataclass
class CoOpOptions:
    init: str = option("a photo of a", "Words whose embeddings start the context ('' = random).")
    context: int | None = option(None, f"Random context vectors, with --coop-init '' [default: {DEFAULT_CONTEXT}].", min=1)

    def __post_init__(self) -> None:
        if self.init and self.context is not None:
            raise ValueError("--coop-context sets the number of random context vectors: pass it with --coop-init ''")


class CoOpTextEncoder(nn.Module):
    """CoOp's learnable context through an open_clip CLIP's frozen text tower.

    The prompt of class c is `[SOT] v_1 ... v_M <name_c> . [EOT]`; the v_m are one set of
    context vectors shared by all classes (CoOp's unified context). They start as the token
    embeddings of `init` ("a photo of a": M = 4) or, with no `init`, as N(0, 0.02) noise.
    """

    def __init__(self, clip: nn.Module, tokenizer: Callable, class_names: Sequence[str], init: str = "a photo of a",
                 context_tokens: int = 16) -> None:
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if getattr(clip, attr, None) is None:
                raise BackboneError(f"--method coop needs an open_clip CLIP with a built-in text tower; "
                                    f"{type(clip).__name__} has no {attr}")
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)
        device = clip.token_embedding.weight.device

        with torch.no_grad():
            if init:
                init_tokens = tokenizer([init]).to(device)[0]
                count = int((init_tokens != 0).sum()) - 2  # without SOT and EOT
                if count < 1:
                    raise OptionError(f"--coop-init {init!r} gives no context token")
                context = clip.token_embedding(init_tokens[1:1 + count])  # (M, W)
            else:
                count = context_tokens
                generator = torch.Generator().manual_seed(_CONTEXT_SEED)  # the same run gives the same start
                context = (torch.randn(count, clip.token_embedding.weight.shape[1], generator=generator) * 0.02).to(device)
            placeholder = " ".join(["X"] * count)
            tokens = tokenizer([f"{placeholder} {name}." for name in class_names]).to(device)  # (C, L)
            embedded = clip.token_embedding(tokens)  # (C, L, W)
        self.context = nn.Parameter(context.clone())
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)  # (C, 1, W): SOT
        self.register_buffer("suffix", embedded[:, 1 + count:].clone(), persistent=False)  # (C, L-1-M, W): name, EOT, padding
        self.register_buffer("positional", clip.positional_embedding.detach().clone(), persistent=False)  # (L, W)
        mask = getattr(clip, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        """
        Returns:
          (torch.Tensor): (C, D) class embeddings in CLIP's joint space (not normalised).
        """
        from open_clip.transformer import text_global_pool

        classes = self.prefix.shape[0]
        context = self.context.unsqueeze(0).expand(classes, -1, -1)  # (C, M, W)
        x = torch.cat([self.prefix, context, self.suffix], dim=1) + self.positional  # (C, L, W)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = text_global_pool(x, self.tokens, self.pool_type, eos_token_id=self.eos_id)  # (C, W)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class ContextPrompts(DefaultPrompts):
    """CoOp's semantic prompts (CoOpTextEncoder) and SAM's default spatial prompts."""

    def __init__(self, inputs: MethodInputs, options: CoOpOptions) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        self.text = CoOpTextEncoder(inputs.clip, inputs.tokenizer, inputs.class_names, options.init,
                                    options.context or DEFAULT_CONTEXT)

    def semantic(self) -> torch.Tensor:
        """(C, D)."""
        return self.text()

    def learned(self) -> dict[str, nn.Parameter]:
        return {"context": self.text.context}


def build_context_prompts(inputs: MethodInputs, options: CoOpOptions) -> PromptSource:
    return ContextPrompts(inputs, options)


COOP = register_method(Method("coop", "learnable text context through CLIP's text tower", prompts=build_context_prompts,
                              options=CoOpOptions, starts_from="initial context"))
