"""SAM's mask decoder over B images x N prompts in one call (SAM's own assumes one image).

Shapes: B images, N prompts, T tokens a prompt, E SAM's prompt width, h x w SAM's embedding grid,
M the mask tokens.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["decode_masks"]


def decode_masks(
    decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompts: torch.Tensor,
    dense_prompt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run SAM's frozen mask decoder for every (image, prompt) pair; single-mask output.

    The same arithmetic as segment_anything's MaskDecoder.predict_masks with
    multimask_output=False, but with the image embeddings expanded over prompts so a
    batch of images decodes in one call (and exports with a dynamic batch axis).

    Arguments:
      decoder (nn.Module): segment_anything MaskDecoder.
      image_embeddings (torch.Tensor): (B, E, h, w) SAM image embeddings.
      image_pe (torch.Tensor): (1, E, h, w) dense positional encoding.
      sparse_prompts (torch.Tensor): (N, T, E) prompt tokens, shared by every image.
      dense_prompt (torch.Tensor): (1, E, h, w) dense prompt (SAM's no-mask embedding).

    Returns:
      (torch.Tensor): (B, N, 4h, 4w) mask logits.
      (torch.Tensor): (B, N) predicted IoU.
    """
    batch, dim, h, w = image_embeddings.shape
    num_prompts = sparse_prompts.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)  # (1+M, E)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(num_prompts, -1, -1), sparse_prompts], dim=1)  # (N, 1+M+T, E)
    tokens = tokens.unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * num_prompts, tokens.shape[1], dim)  # (B*N, 1+M+T, E)

    src = (image_embeddings + dense_prompt).unsqueeze(1).expand(-1, num_prompts, -1, -1, -1)
    src = src.reshape(batch * num_prompts, dim, h, w)  # (B*N, E, h, w)
    pos = image_pe.expand(batch * num_prompts, -1, -1, -1)  # (B*N, E, h, w)

    hs, src = decoder.transformer(src, pos, tokens)  # hs: (B*N, 1+M+T, E), src: (B*N, h*w, E)
    iou_token_out = hs[:, 0, :]
    mask_token_out = hs[:, 1, :]  # mask token 0: SAM's single-mask output

    src = src.transpose(1, 2).reshape(batch * num_prompts, dim, h, w)
    upscaled = decoder.output_upscaling(src)  # (B*N, E/8, 4h, 4w)
    hyper = decoder.output_hypernetworks_mlps[0](mask_token_out)  # (B*N, E/8)
    masks = (hyper.unsqueeze(1) @ upscaled.flatten(2)).reshape(batch, num_prompts, 4 * h, 4 * w)
    iou = decoder.iou_prediction_head(iou_token_out)[:, 0].reshape(batch, num_prompts)
    return masks, iou
