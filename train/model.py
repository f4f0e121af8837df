"""The model: a frozen SAM + CLIP around a method's parts (methods/), and the mask classifier and
semantic map that turn SAM's masks into a label map.

The frozen encoders run once per image (`encode`), the rest per step (`forward`). What the
method decides, built by name from `config.method` with its `config.method_options`: the prompts
the decoder and the classifier get, how the image encoder and the decoder run, an extra loss
term, and what learns (methods/registry.py).

Shapes: B images, N spatial prompts, T tokens a prompt, E SAM's prompt width, h x w SAM's
embedding grid, M = 4h the mask side, C classes, D CLIP's joint width, g the dense CLIP grid,
S the square input's side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ssprompt.runtime.contract import Normalization

from .backbones import Backbones
from .config import ModelConfig
from .decoder import decode_masks
from .dense_clip import DenseClipEncoder, auto_clip_grid
from .methods.base import MethodInputs, embed_points
from .methods.registry import get_method

__all__ = [
    "SSPrompt",
    "Prediction",
    "grid_points",
    "mask_class_logits",
    "semantic_map",
    "labels_from_semantic",
    "default_semantic_prompts",
]

# CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / STD), used when a model carries none.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_EPS = 1e-6


def grid_points(side: int, image_size: int) -> torch.Tensor:
    """Centres of a side x side grid over the square model input, as (x, y) pixel coordinates.

    Returns:
      (torch.Tensor): (side * side, 2), row-major from the top-left.
    """
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) * (image_size / side)
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def mask_class_logits(
    masks: torch.Tensor, features: torch.Tensor, semantic: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Mask-pool dense CLIP features and compare them with the semantic prompts by cosine.

    Arguments:
      masks (torch.Tensor): (B, N, M, M) mask logits.
      features (torch.Tensor): (B, D, g, g) dense CLIP features; g divides M.
      semantic (torch.Tensor): (C, D) semantic prompts (normalised here).
      logit_scale (torch.Tensor): scalar, CLIP's exp(logit_scale).

    Returns:
      (torch.Tensor): (B, N, C) class logits.
    """
    pool = F.avg_pool2d(masks.sigmoid(), kernel_size=masks.shape[-1] // features.shape[-1]).flatten(2)  # (B, N, g*g)
    pooled = pool @ features.flatten(2).transpose(1, 2)  # (B, N, D)
    # Dividing by the area changes no cosine, but keeps the values small enough for FP16.
    pooled = F.normalize(pooled / pool.sum(-1, keepdim=True).clamp_min(_EPS), dim=-1, eps=_EPS)
    return logit_scale * pooled @ F.normalize(semantic, dim=-1).t()


def semantic_map(masks: torch.Tensor, iou: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """S_c(x) = sum_n softmax(l_n)_c * sigmoid(m_n(x)) * q_n, normalised over classes.

    The IoU estimate q_n is clamped to [0, 1] (SAM trains it as an IoU; a random head can
    leave that range), and a small constant keeps uncovered pixels at a uniform class mix.

    Arguments:
      masks (torch.Tensor): (B, N, M, M) mask logits.
      iou (torch.Tensor): (B, N) IoU estimates.
      class_logits (torch.Tensor): (B, N, C).

    Returns:
      (torch.Tensor): (B, C, M, M) class probabilities (sum to 1 over C).
    """
    height, width = masks.shape[-2:]
    num_classes = class_logits.shape[-1]
    weights = class_logits.softmax(-1) * iou.clamp(0.0, 1.0).unsqueeze(-1)  # (B, N, C)
    scores = weights.transpose(1, 2) @ masks.sigmoid().flatten(2)  # (B, C, H*W)
    scores = scores.reshape(-1, num_classes, height, width)  # -1: the exporter keeps the batch axis symbolic
    return (scores + _EPS) / (scores.sum(1, keepdim=True) + num_classes * _EPS)


def labels_from_semantic(semantic: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The label map the exported graph outputs: the semantic map resized (bilinear) to the square
    input, then the most probable class per pixel and its probability.

    Arguments:
      semantic (torch.Tensor): (B, C, M, M) class probabilities.
      image_size (int): S.

    Returns:
      (torch.Tensor): (B, S, S) int64 labels.
      (torch.Tensor): (B, S, S) confidence.
    """
    semantic = F.interpolate(semantic, size=(image_size, image_size), mode="bilinear", align_corners=False)
    confidence, labels = semantic.max(dim=1)
    return labels, confidence


@torch.no_grad()
def default_semantic_prompts(clip: nn.Module, tokenizer, class_names: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings of each class name, averaged over the 80 ImageNet templates, L2-normalised.

    Returns:
      (torch.Tensor): (C, D).
    """
    from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

    device = next(clip.parameters()).device
    weights = build_zero_shot_classifier(
        clip, tokenizer, list(class_names), OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=4, device=device
    )  # (D, C)
    return weights.t().contiguous()


@dataclass
class Prediction:
    masks: torch.Tensor  # (B, N, M, M) mask logits
    iou: torch.Tensor  # (B, N) IoU estimates
    class_logits: torch.Tensor  # (B, N, C)
    semantic: torch.Tensor  # (B, C, M, M) class probabilities


class SSPrompt(nn.Module):
    """A method (SSPrompt's, or a baseline's) around a frozen SAM + CLIP.

    The method's parts (methods/base.py) are `prompts`, `encoder_adapter`, `decoding` and
    `extra_loss`; what they name in `learned()` is all that can learn, everything else is a frozen
    module or a buffer. The model also carries the facts pre-processing and export need: the
    letterbox padding and both normalisations (`pad_value`, `normalization`).

    Raises:
      ValueError: an unknown method, or options it refuses; a clip_grid that does not divide the mask size.
    """

    def __init__(
        self,
        backbones: Backbones,
        class_names: Sequence[str],
        config: ModelConfig,
        default_semantic: torch.Tensor | None = None,
        prompts: nn.Module | None = None,
    ) -> None:
        """`prompts`: a prompt source to use instead of building `config.method`'s (export passes a pack's baked
        prompts: an object with spatial(), semantic() and learned())."""
        super().__init__()
        method = get_method(config.method)
        options = method.parse_options(config.method_options)
        self.config = replace(config, method_options=asdict(options))  # every option, defaults included, for the pack
        self.class_names = list(class_names)
        self.sam = backbones.sam
        sam = self.sam
        self.image_size: int = sam.image_encoder.img_size
        emb_h, emb_w = sam.prompt_encoder.image_embedding_size
        self.mask_size = 4 * emb_h
        visual = backbones.clip.visual
        grid = config.clip_grid or auto_clip_grid(visual.grid_size[0], self.mask_size)
        if self.mask_size % grid:
            raise ValueError(f"clip_grid {grid} must divide SAM's mask size {self.mask_size}")
        self.clip_dense = DenseClipEncoder(visual, grid)
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        clip_mean = preprocess.get("mean", _CLIP_MEAN)
        clip_std = preprocess.get("std", _CLIP_STD)

        with torch.no_grad():
            points = grid_points(config.grid_side, self.image_size)  # (N, 2)
            default_spatial = embed_points(sam.prompt_encoder, points)  # (N, T, E)
            dense_pe = sam.prompt_encoder.get_dense_pe()  # (1, E, h, w)
            no_mask = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, emb_h, emb_w)
            if default_semantic is None:
                default_semantic = default_semantic_prompts(backbones.clip, backbones.tokenizer, self.class_names)
            if default_semantic.shape[0] != len(self.class_names):
                raise ValueError(f"{default_semantic.shape[0]} semantic prompts for {len(self.class_names)} classes")

        self.register_buffer("grid_points", points)
        self.register_buffer("default_spatial", default_spatial.clone())
        self.register_buffer("default_semantic", default_semantic.clone())
        self.register_buffer("dense_pe", dense_pe.clone())
        self.register_buffer("no_mask_dense", no_mask.clone())
        self.register_buffer("logit_scale", backbones.clip.logit_scale.detach().exp().clone())
        self.register_buffer("clip_mean", torch.tensor(clip_mean).reshape(1, 3, 1, 1) * 255.0)
        self.register_buffer("clip_std", torch.tensor(clip_std).reshape(1, 3, 1, 1) * 255.0)
        inputs = MethodInputs(default_spatial, default_semantic, points, self.image_size, sam, backbones.clip,
                              backbones.tokenizer, self.class_names, self.config)
        # Given prompts (export: a pack's baked ones), the method's prompt source is not rebuilt.
        self.prompts = prompts if prompts is not None else method.prompts(inputs, options)
        self.encoder_adapter = method.encoder_adapter(inputs, options)
        self.decoding = method.decoding(inputs, options)
        self.extra_loss = method.extra_loss(inputs, options)
        self.learned()  # refuses two parts naming a tensor alike

    @property
    def num_prompts(self) -> int:
        return self.default_spatial.shape[0]

    @property
    def clip_input_size(self) -> int:
        return self.clip_dense.input_size

    @property
    def pad_value(self) -> tuple[int, int, int]:
        """Letterbox padding: SAM's pixel mean, so padding normalises to about zero as in SAM's own preprocessing."""
        return tuple(int(round(v)) for v in self.sam.pixel_mean.flatten().tolist())

    def normalization(self) -> Normalization:
        """SAM's pixel mean and std (0..255), CLIP's (0..1) and CLIP's input side: what the graph applies."""
        return Normalization(
            sam_mean=self.sam.pixel_mean.flatten().tolist(),
            sam_std=self.sam.pixel_std.flatten().tolist(),
            clip_mean=(self.clip_mean.flatten() / 255).tolist(),
            clip_std=(self.clip_std.flatten() / 255).tolist(),
            clip_input_size=int(self.clip_input_size),
        )

    def learned(self) -> dict[str, nn.Parameter]:
        """Every part's learnable tensors by the names packs and checkpoints store them under (trainable or not)."""
        named: dict[str, nn.Parameter] = {}
        for part in (self.prompts, self.encoder_adapter, self.decoding, self.extra_loss):
            for name, parameter in part.learned().items():
                if name in named:
                    raise ValueError(f"method {self.config.method}: two of its parts name a learnable {name!r}")
                named[name] = parameter
        return named

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.learned().values() if p.requires_grad]

    def spatial_prompts(self) -> torch.Tensor:
        """(N, T, E) prompts for SAM's decoder, from the method's prompts."""
        return self.prompts.spatial()

    def semantic_prompts(self) -> torch.Tensor:
        """(C, D) prompts for the mask classifier (not normalised), from the method's prompts."""
        return self.prompts.semantic()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen encoders.

        Arguments:
          images (torch.Tensor): (B, S, S, 3) uint8, letterboxed to SAM's square input.

        Returns:
          (torch.Tensor): (B, E, h, w) SAM image embeddings.
          (torch.Tensor): (B, D, g, g) dense CLIP features.
        """
        return self.encode_images(images)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` without no_grad, for export tracing and encoder-in-the-loop training; SAM's image
        encoder runs through the method's encoder adapter."""
        # (B, 3, S, S); cast before the transpose: TensorRT takes uint8 only as the network's input, not inside it
        x = images.float().permute(0, 3, 1, 2)
        sam_embeddings = self.encoder_adapter.encode(self.sam.image_encoder, (x - self.sam.pixel_mean) / self.sam.pixel_std)
        clip_size = self.clip_dense.input_size
        if clip_size != x.shape[-1]:
            x = F.interpolate(x, size=(clip_size, clip_size), mode="bilinear", align_corners=False)
        clip_features = self.clip_dense((x - self.clip_mean) / self.clip_std)
        return sam_embeddings, clip_features

    def decode(self, sam_embeddings: torch.Tensor, spatial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of SAM's decoder: (B, N, M, M) mask logits and (B, N) IoU for every image and spatial
        prompt ((N, T, E)), with SAM's no-mask dense prompt. The method's `decoding` runs it.

        Prompts run in chunks of `decoder_chunk`; while gradients are on, each chunk is
        checkpointed, so the decoder's image-side activations are kept for one chunk only.
        """
        chunk = self.config.decoder_chunk
        masks, ious = [], []
        for start in range(0, spatial.shape[0], chunk):
            args = (self.sam.mask_decoder, sam_embeddings, self.dense_pe, spatial[start:start + chunk], self.no_mask_dense)
            if torch.is_grad_enabled() and spatial.requires_grad:
                m, q = checkpoint(decode_masks, *args, use_reentrant=False)
            else:
                m, q = decode_masks(*args)
            masks.append(m)
            ious.append(q)
        return torch.cat(masks, dim=1), torch.cat(ious, dim=1)

    def forward(self, sam_embeddings: torch.Tensor, clip_features: torch.Tensor) -> Prediction:
        """
        Arguments:
          sam_embeddings (torch.Tensor): (B, E, h, w) from `encode`.
          clip_features (torch.Tensor): (B, D, g, g) from `encode`.

        Returns:
          (Prediction): masks (B, N, M, M), iou (B, N), class_logits (B, N, C), semantic (B, C, M, M).
        """
        masks, iou = self.decoding.decode(self, sam_embeddings, self.spatial_prompts())
        logits = mask_class_logits(masks, clip_features, self.semantic_prompts(), self.logit_scale)
        return Prediction(masks, iou, logits, semantic_map(masks, iou, logits))
