"""Export-only wrapper: one traceable module from uint8 images to labels, prompts baked in.

Not for direct use: it exists to be traced by torch.onnx.export. Train and evaluate with
`ssprompt.train.model.SSPrompt`. The wrapper
- bakes the spatial prompts and the normalised semantic prompts as constants (fused for
  SSPrompt; for a baseline, whatever its method feeds the decoder and the classifier);
- decodes the N prompts with `PromptDecoder` (prompt_decoder.py): SAM's decoder arithmetic laid
  out for a graph, in static groups of the model's `decoder_chunk` prompts; no Python loop over
  images, so the batch axis stays dynamic;
- swaps the image encoder's attention for `EncoderAttention` (encoder_attention.py): relative
  positions inside the q.k product, global attention in query chunks;
- swaps SAM's hand-written LayerNorm2d for `F.layer_norm` over channels, which exports as
  one ONNX LayerNormalization node that TensorRT maps to a normalisation layer it can keep
  in FP32 (the hand-written mean/var/sqrt chain overflows in FP16).

Shapes: B images, S the square input's side, N spatial prompts, T tokens a prompt, E SAM's prompt
width, h x w SAM's embedding grid, M = 4h the mask side, C classes, D CLIP's joint width; (B, C, H, W)
in LayerNorm2d is any channels-first map.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ssprompt.runtime.contract import (CLASS_IDS, CLASS_PROBS, CONFIDENCE, INPUT_SPECS, IOU, LABELS, MASK_LOGITS,
                                       OUTPUT_SPECS, axis_sizes)
from ssprompt.train.model import SSPrompt, labels_from_semantic, mask_class_logits, semantic_map

from .clip_attention import swap_clip_attention
from .encoder_attention import swap_encoder_attention
from .prompt_decoder import PromptDecoder

ENCODER_QUERY_CHUNK = 1024  # queries of SAM's global attention whose logits are alive together

__all__ = ["ExportGraph", "ChannelLayerNorm", "SamLayoutDecoder", "LAYOUTS", "ONNX_RUNTIME_ONLY", "dummy_inputs",
           "graph_axis_sizes"]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map; numerically SAM's LayerNorm2d."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(source.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(source.bias.detach().clone(), requires_grad=False)
        self.eps = source.eps
        self.channels = int(source.weight.shape[0])  # a Python int: the traced shape stays static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def _swap_layer_norm_2d(module: nn.Module) -> int:
    from segment_anything.modeling.common import LayerNorm2d

    swapped = 0
    for name, child in module.named_children():
        if isinstance(child, LayerNorm2d):
            setattr(module, name, ChannelLayerNorm(child))
            swapped += 1
        else:
            swapped += _swap_layer_norm_2d(child)
    return swapped


class SamLayoutDecoder(nn.Module):
    """The decoder as SAM lays it out (the image embedding copied for every prompt, NCHW upscaling):
    `train.decoder.decode_masks` in one call. Kept for the export ablation (benchmarks/gpu_ablation.py)."""

    def __init__(self, decoder: nn.Module, image_pe: torch.Tensor, dense_prompt: torch.Tensor, sparse: torch.Tensor) -> None:
        """The same arguments as PromptDecoder's, but its chunk: SAM's MaskDecoder, (1, E, h, w) positional
        encoding, (1, E, h, w) dense prompt, (N, Ts, E) sparse prompts."""
        super().__init__()
        self.decoder = decoder
        self.register_buffer("spatial", sparse.clone())
        self.register_buffer("image_pe", image_pe.clone())
        self.register_buffer("dense", dense_prompt.clone())

    @property
    def sparse_prompts(self) -> torch.Tensor:
        """(N, T, E): the spatial prompts baked in."""
        return self.spatial

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E, h, w) image embeddings -> (B, N, M, M) mask logits, (B, N) IoU."""
        from ssprompt.train.decoder import decode_masks

        return decode_masks(self.decoder, image_embeddings, self.image_pe, self.spatial, self.dense)


# "graph": PromptDecoder and EncoderAttention (what ships); "ort-attention": the same with the encoder's attention
# as ONNX Runtime's fused MultiHeadAttention (ONNX Runtime only: `ssp-export --ort-attention`); "ort-fused": every
# attention of the encoder, CLIP and the decoder's token-to-image ones fused, and residual norms as
# SkipLayerNormalization after tracing (ort_fusion.py; `ssp-export --ort-fused`); "sam": SAM's own attention and
# decoder layout, as exports were before them (kept for the ablation only).
LAYOUTS = ("graph", "ort-attention", "ort-fused", "sam")
ONNX_RUNTIME_ONLY = ("ort-attention", "ort-fused")  # layouts with com.microsoft ops, which TensorRT cannot build


class ExportGraph(nn.Module):
    """uint8 letterboxed images → per-pixel labels and confidences, per-prompt masks, IoU and classes."""

    def __init__(self, model: SSPrompt, layout: str = "graph") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: choose {' or '.join(LAYOUTS)}")
        model = copy.deepcopy(model).cpu().eval()
        self.swapped_layer_norms = _swap_layer_norm_2d(model.sam)
        self.swapped_attention = 0 if layout == "sam" else swap_encoder_attention(
            model.sam.image_encoder, ENCODER_QUERY_CHUNK, fused=layout in ONNX_RUNTIME_ONLY)
        if layout == "ort-fused":  # the last block's attention is MaskCLIP's value path alone (DenseClipEncoder)
            visual = model.clip_dense.visual
            self.swapped_attention += swap_clip_attention(visual, len(visual.transformer.resblocks) - 1)
        self.model = model
        with torch.no_grad():
            spatial = model.spatial_prompts().detach()  # (N, T, E)
            self.register_buffer("semantic", F.normalize(model.semantic_prompts(), dim=-1).detach().clone())  # (C, D)
        if layout != "sam":
            self.decoder = PromptDecoder(model.sam.mask_decoder, model.dense_pe, model.no_mask_dense, spatial,
                                         model.config.decoder_chunk, fused=layout == "ort-fused")
        else:
            self.decoder = SamLayoutDecoder(model.sam.mask_decoder, model.dense_pe, model.no_mask_dense, spatial)
        self.image_size = model.image_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """
        Arguments:
          images (torch.Tensor): (B, S, S, 3) uint8, letterboxed RGB.

        Returns (in contract.OUTPUT_SPECS order, of its dtypes):
          labels (B, S, S) int32, confidence (B, S, S) float32, mask_logits (B, N, M, M), iou (B, N),
          class_ids (B, N) int32, class_probs (B, N, C) float32.
        """
        model = self.model
        sam_embeddings, clip_features = model.encode_images(images)
        masks, iou = self.decoder(sam_embeddings)
        class_logits = mask_class_logits(masks, clip_features, self.semantic, model.logit_scale)
        labels, confidence = labels_from_semantic(semantic_map(masks, iou, class_logits), self.image_size)  # (B, S, S)
        outputs = {LABELS: labels, CONFIDENCE: confidence, MASK_LOGITS: masks, IOU: iou,
                   CLASS_IDS: class_logits.argmax(dim=-1), CLASS_PROBS: class_logits.softmax(dim=-1)}
        return tuple(outputs[spec.name].to(getattr(torch, spec.dtype)) for spec in OUTPUT_SPECS)


def graph_axis_sizes(model: SSPrompt) -> dict[str, int]:
    """The sizes of the contract's static axes in `model`'s graph: what it declares and produces."""
    return axis_sizes(model.image_size, model.mask_size, model.num_prompts, len(model.class_names))


def dummy_inputs(image_size: int, batch: int = 1) -> dict[str, torch.Tensor]:
    """The one dict of example inputs that drives both the trial run and the input names: random values of each
    contract input's dtype and shape."""
    generator = torch.Generator().manual_seed(0)
    sizes = axis_sizes(image_size)
    return {spec.name: torch.randint(0, 256, spec.shape(sizes, batch), dtype=getattr(torch, spec.dtype),
                                     generator=generator) for spec in INPUT_SPECS}
