"""Export-only: open_clip's self-attention (nn.MultiheadAttention) as ONNX Runtime's fused MultiHeadAttention.

Not for direct use: `ExportGraph` swaps it into the dense CLIP encoder for `ssp-export --ort-fused`;
tests hold the two equal. Traced, nn.MultiheadAttention is a q.k MatMul, a Softmax and a MatMul with
the values, each reading and writing the H x L x L logits (12 x 1025 x 1025 an image for ViT-B/16 on
a 32 x 32 grid); the fused node holds none of them (encoder_attention.fused_attention).

Shapes: B images, L tokens, W = H * D the width, H heads of D channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder_attention import fused_attention

__all__ = ["ClipAttention", "swap_clip_attention"]


class ClipAttention(nn.Module):
    """nn.MultiheadAttention's self-attention without a mask, called as open_clip's blocks call it."""

    def __init__(self, source: nn.MultiheadAttention) -> None:
        super().__init__()
        if not source._qkv_same_embed_dim or source.in_proj_weight is None:
            raise TypeError("ClipAttention needs nn.MultiheadAttention with one packed input projection")
        self.in_proj_weight = source.in_proj_weight
        self.in_proj_bias = source.in_proj_bias
        self.out_proj = source.out_proj
        self.heads = source.num_heads
        self.scale = (source.embed_dim // source.num_heads) ** -0.5
        self.batch_first = source.batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """query, key, value (B, L, W) (or (L, B, W) unless batch_first), the same tensor -> ((B, L, W), None)."""
        if attn_mask is not None or need_weights or key is not query or value is not query:
            raise ValueError("ClipAttention: self-attention only, without a mask or weights")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, L, W)
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # (B, L, W) each
        out = self.out_proj(fused_attention(q * self.scale, k, v, self.heads, x.shape[1]))
        return (out if self.batch_first else out.transpose(0, 1)), None


def swap_clip_attention(visual: nn.Module, blocks: int) -> int:
    """Replace the attention of the first `blocks` resblocks of an open_clip VisionTransformer; returns how many."""
    swapped = 0
    for block in visual.transformer.resblocks[:blocks]:
        if isinstance(block.attn, nn.MultiheadAttention):
            block.attn = ClipAttention(block.attn)
            swapped += 1
    return swapped
