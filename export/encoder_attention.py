"""Export-only: SAM's image-encoder attention with decomposed relative positions, arranged for a graph.

Not for direct use: `ExportGraph` swaps it in for segment_anything's `Attention` before tracing;
tests hold the two equal. SAM adds two relative-position terms to the attention logits,

    logits[q, k] = scale * q . k + rel_h[q, row(k)] + rel_w[q, col(k)],

with rel_h = q . Rh[row(q)] and rel_w = q . Rw[col(q)]. Written that way, a graph materialises
the logits three times (the product, then two broadcast additions). Here the terms enter through
the product itself: each query is extended by its rel_h and rel_w values and each key by one-hot
indicators of its row and column, so

    [scale * q, rel_h, rel_w] . [k, onehot(row(k)), onehot(col(k))] = logits[q, k]

exactly, in one matmul. Queries run in groups of `query_chunk`, so one group's logits are alive
at a time (global attention over 64 x 64 tokens holds 12 x 4096 x 4096 logits an image otherwise).

With `fused`, the same extended queries and keys go to one ONNX Runtime MultiHeadAttention node
(com.microsoft). For the global blocks' 4096 tokens its kernels do not hold the logits: on a
GPU, cutlass's memory-efficient attention, which takes a query/key head size (D+h+w, padded
with zeros to a multiple of 8) apart from the value head size D; in FP32 only from a sequence
length ONNX Runtime sets (ORT_MIN_SEQ_LEN_EFFICIENT_ATTENTION_FP32), so small windows may use its
unfused kernel there. Only ONNX Runtime runs such a graph.

Shapes: B images (or windows), h x w tokens (L = h * w), H heads of D channels, C = H * D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EncoderAttention", "swap_encoder_attention"]


def _attend_in_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, query_chunk: int,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T + bias) v, q (B, Lq, H*Dq), k (B, Lk, H*Dq), v (B, Lk, H*D) -> (B, Lq, H*D), in query chunks."""
    q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))  # (B, H, L, Dq) / (B, H, L, D)
    k_t = k.transpose(-1, -2)
    logits = [part @ k_t for part in q.split(query_chunk, dim=2)]
    if bias is not None:
        logits = [part + b for part, b in zip(logits, bias.split(query_chunk, dim=2))]
    out = torch.cat([part.softmax(dim=-1) @ v for part in logits], dim=2)  # (B, H, Lq, D)
    return out.transpose(1, 2).flatten(2)


def _multi_head_attention(g, q, k, v, heads: int, bias=None):
    inputs = [q, k, v]
    if bias is not None:
        missing = g.op("prim::Constant")  # the optional bias (of the projections) and key_padding_mask: absent
        missing.setType(torch._C.OptionalType.ofTensor())
        inputs += [missing, missing, bias]
    out = g.op("com.microsoft::MultiHeadAttention", *inputs, num_heads_i=heads, scale_f=1.0)
    # The output: (B, Lq, H*D). Only its width is declared: the traced sizes are the example's, and a declared
    # batch or length would contradict the graph's own shapes at other batch sizes.
    width = v.type().varyingSizes()[-1:] if v.type().varyingSizes() else None
    out.setType(v.type().with_sizes([None, None, *width]) if width else v.type())
    return out


# Two Functions rather than one with an optional bias, so that each traced signature is fixed. Their forward adds
# no constant 0 either: TorchScript's peephole pass removes it from the traced body and then fails.
class _FusedAttention(torch.autograd.Function):
    """softmax(q k^T) v for every head, q pre-scaled. In PyTorch: plain matmuls in query chunks. Traced:
    one com.microsoft MultiHeadAttention node (scale 1), whose output has the queries' length and the
    values' width. Export only: it has no backward (training uses SAM's own attention)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, query_chunk: int) -> torch.Tensor:
        return _attend_in_chunks(q, k, v, heads, query_chunk, None)

    @staticmethod
    def symbolic(g, q, k, v, heads: int, query_chunk: int):
        return _multi_head_attention(g, q, k, v, heads)


class _FusedBiasedAttention(torch.autograd.Function):
    """_FusedAttention with a bias added to the logits (MultiHeadAttention's attention_bias input)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int,
                query_chunk: int) -> torch.Tensor:
        return _attend_in_chunks(q, k, v, heads, query_chunk, bias)

    @staticmethod
    def symbolic(g, q, k, v, bias, heads: int, query_chunk: int):
        return _multi_head_attention(g, q, k, v, heads, bias)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, query_chunk: int,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    Arguments:
      q, k (torch.Tensor): (B, Lq, H*Dq) and (B, Lk, H*Dq), heads side by side; q already scaled.
      v (torch.Tensor): (B, Lk, H*D).
      heads (int): H.
      query_chunk (int): queries whose logits PyTorch holds at once (the traced node holds none).
      bias (torch.Tensor | None): (B or 1, H or 1, Lq, Lk), added to the logits.

    Returns:
      (torch.Tensor): (B, Lq, H*D).
    """
    if bias is None:
        return _FusedAttention.apply(q, k, v, heads, query_chunk)
    return _FusedBiasedAttention.apply(q, k, v, bias, heads, query_chunk)


class EncoderAttention(nn.Module):
    """segment_anything.modeling.image_encoder.Attention (with relative positions), for export."""

    def __init__(self, source: nn.Module, size: tuple[int, int], query_chunk: int, fused: bool = False) -> None:
        """
        Arguments:
          source (nn.Module): SAM's Attention, with use_rel_pos.
          size (tuple[int, int]): the token grid (h, w) it attends over (a window, or the whole image).
          query_chunk (int): queries whose logits are computed together.
          fused (bool): attend through `fused_attention` (ONNX Runtime's MultiHeadAttention once traced).
        """
        from segment_anything.modeling.image_encoder import get_rel_pos

        super().__init__()
        self.qkv = source.qkv
        self.proj = source.proj
        self.heads = source.num_heads
        self.scale = source.scale
        self.size = size
        self.query_chunk = query_chunk
        h, w = size
        with torch.no_grad():
            self.register_buffer("rel_h", get_rel_pos(h, h, source.rel_pos_h).clone())  # (h, h, D)
            self.register_buffer("rel_w", get_rel_pos(w, w, source.rel_pos_w).clone())  # (w, w, D)
            rows = torch.arange(h).repeat_interleave(w)  # row of each key token
            cols = torch.arange(w).repeat(h)
            head_dim = source.rel_pos_h.shape[1]
            # Fused: the query/key head size padded with zero columns to a multiple of 8 (memory-efficient attention's).
            self.padding = -(head_dim + h + w) % 8 if fused else 0
            positions = torch.cat([F.one_hot(rows, h).float(), F.one_hot(cols, w).float(), torch.zeros(h * w, self.padding)],
                                  dim=1)
            self.register_buffer("key_positions", positions)  # (L, h+w+pad): the key's row and column, zeros
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): (B, h, w, C) tokens.

        Returns:
          (torch.Tensor): (B, h, w, C).
        """
        if self.fused:
            return self._forward_fused(x)
        h, w = self.size
        batch = x.shape[0]  # reshaped with, as SAM does, so the exporter keeps the batch axis symbolic
        qkv = self.qkv(x).reshape(batch, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D)
        q, k, v = qkv.unbind(0)
        grid_q = q.reshape(batch, self.heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, self.rel_h).reshape(batch, self.heads, h * w, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, self.rel_w).reshape(batch, self.heads, h * w, w)
        queries = torch.cat([q * self.scale, rel_h, rel_w], dim=-1)  # (B, H, L, D+h+w)
        # One Concat with the broadcast constant: a Pad of k and an Add of [0, onehot(row), onehot(col)] read and write
        # the whole D+h+w keys twice more (Pad nodes took 12 % of the H200's node time, gpu_profile_cuda.md).
        positions = self.key_positions.to(k.dtype).expand(batch, self.heads, -1, -1)  # (B, H, L, h+w)
        keys_t = torch.cat([k, positions], dim=-1).transpose(-1, -2)  # (B, H, D+h+w, L)
        out = [(part @ keys_t).softmax(dim=-1) @ v for part in queries.split(self.query_chunk, dim=2)]  # (B, H, l, D) each
        out = torch.cat(out, dim=2).transpose(1, 2).reshape(batch, h, w, -1)  # (B, h, w, C)
        return self.proj(out)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """forward, heads side by side as MultiHeadAttention takes them: (B, h, w, C) -> (B, h, w, C)."""
        h, w = self.size
        batch = x.shape[0]
        q, k, v = self.qkv(x).reshape(batch, h * w, 3, self.heads, -1).unbind(2)  # (B, L, H, D) each
        grid_q = q.reshape(batch, h, w, self.heads, -1)
        rel_h = torch.einsum("bhwnc,hkc->bhwnk", grid_q, self.rel_h).reshape(batch, h * w, self.heads, h)
        rel_w = torch.einsum("bhwnc,wkc->bhwnk", grid_q, self.rel_w).reshape(batch, h * w, self.heads, w)
        zeros = [q.new_zeros(()).expand(batch, h * w, self.heads, self.padding)] if self.padding else []  # (B, L, H, pad)
        queries = torch.cat([q * self.scale, rel_h, rel_w, *zeros], dim=-1)  # (B, L, H, D+h+w+pad)
        positions = self.key_positions.to(k.dtype)[:, None].expand(batch, -1, self.heads, -1)  # (B, L, H, h+w+pad)
        keys = torch.cat([k, positions], dim=-1)  # (B, L, H, D+h+w+pad)
        out = fused_attention(queries.flatten(2), keys.flatten(2), v.flatten(2), self.heads, self.query_chunk)  # (B, L, C)
        return self.proj(out.reshape(batch, h, w, -1))


def swap_encoder_attention(encoder: nn.Module, query_chunk: int, fused: bool = False) -> int:
    """Replace the relative-position Attention of every block of SAM's ImageEncoderViT; returns how many.

    Windowed blocks attend within window_size x window_size windows, global blocks over the
    whole patch grid. Windows are small, so only global blocks are split into query chunks.
    `fused`: every block attends through `fused_attention` (EncoderAttention's `fused`).
    """
    grid = (encoder.img_size // encoder.patch_embed.proj.kernel_size[0],) * 2
    swapped = 0
    for block in encoder.blocks:
        attn = block.attn
        if not getattr(attn, "use_rel_pos", False):
            continue
        size = (block.window_size, block.window_size) if block.window_size > 0 else grid
        chunk = size[0] * size[1] if block.window_size > 0 else query_chunk
        block.attn = EncoderAttention(attn, size, chunk, fused)
        swapped += 1
    return swapped
