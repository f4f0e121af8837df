"""Dense CLIP image features, MaskCLIP-style, from an open_clip VisionTransformer.

Shapes: B images, S the input side, g the patch grid (S / patch size), W the transformer width,
D CLIP's joint embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseClipEncoder", "auto_clip_grid"]


def auto_clip_grid(native_grid: int, mask_size: int) -> int:
    """The power of two nearest to twice CLIP's native grid that also divides the mask size.

    Dense features at about twice the native resolution are MaskCLIP's usual setting; a
    divisor of the mask size lets masks be pooled onto the grid by exact average pooling.
    """
    target = 2 * native_grid
    candidates = [g for g in (2**i for i in range(1, 12)) if mask_size % g == 0 and g <= mask_size]
    return min(candidates, key=lambda g: (abs(g - target), -g))


class DenseClipEncoder(nn.Module):
    """Per-patch CLIP embeddings on a `grid x grid` map.

    MaskCLIP: in the last transformer block the query-key attention is dropped and every
    token keeps only its own value path (value projection, output projection), followed by
    the block's residual and MLP as usual; then `ln_post` and `proj` map each patch token
    into CLIP's joint embedding space, where it compares with text embeddings.
    The positional embedding is resized (bicubic) once, here, to the feature grid.
    """

    def __init__(self, visual: nn.Module, grid: int) -> None:
        super().__init__()
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj"):
            if not hasattr(visual, attr):
                raise TypeError(f"dense CLIP features need an open_clip VisionTransformer; {type(visual).__name__} has no {attr}")
        if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
            raise TypeError("dense CLIP features need a ViT without attentional pooling and with a projection")
        last = visual.transformer.resblocks[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
            raise TypeError("dense CLIP features need the standard open_clip ResidualAttentionBlock (nn.MultiheadAttention)")
        self.visual = visual
        self.grid = grid
        self.patch_size = visual.conv1.kernel_size[0]
        self.input_size = grid * self.patch_size
        self.embed_dim = visual.proj.shape[1]

        pos = visual.positional_embedding.detach()  # (1 + g0*g0, W)
        native = int(round((pos.shape[0] - 1) ** 0.5))
        width = pos.shape[1]
        patch_pos = pos[1:].reshape(1, native, native, width).permute(0, 3, 1, 2)  # (1, W, g0, g0)
        if native != grid:
            patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid * grid, width)  # (g*g, W)
        self.register_buffer("pos_embed", torch.cat([pos[:1], patch_pos]), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          images (torch.Tensor): (B, 3, S, S) CLIP-normalised images, S = g * patch size.

        Returns:
          (torch.Tensor): (B, D, g, g) patch embeddings in CLIP's joint space (not normalised).
        """
        visual = self.visual
        batch = images.shape[0]
        x = visual.conv1(images)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # (B, 1+g*g, W)
        x = visual.ln_pre(x)

        batch_first = getattr(visual.transformer, "batch_first", True)
        blocks = visual.transformer.resblocks
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)

        last = blocks[-1]
        width = x.shape[-1]
        value = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
        x = x + last.ls_1(last.attn.out_proj(value))
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        x = visual.ln_post(x[:, 1:]) @ visual.proj  # (B, g*g, D)
        return x.transpose(1, 2).reshape(batch, self.embed_dim, self.grid, self.grid)
