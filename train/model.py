"""SSPrompt: learnable spatial and semantic prompts fused with SAM's and CLIP's defaults.

Only four tensors learn: the spatial prompts and their weight logits, the semantic prompts
and their weight logits. SAM (image encoder, prompt encoder, mask decoder) and CLIP stay
frozen; the frozen encoders run once per image (`encode`), the rest per step (`forward`).
The same model runs the baselines (`config.method`, see baselines.py), which change only
where the spatial and semantic prompts come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import Backbones
from .baselines import CoOpTextEncoder, embed_points
from .config import ModelConfig
from .decoder import decode_masks
from .dense_clip import DenseClipEncoder, auto_clip_grid

__all__ = [
    "SSPrompt",
    "Prediction",
    "fuse_prompts",
    "grid_points",
    "mask_class_logits",
    "semantic_map",
    "default_semantic_prompts",
]

# CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / STD), used when a model carries none.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_EPS = 1e-6


def fuse_prompts(learned: torch.Tensor, default: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Paper eq. 4 and 6: Z = w * z_learned + (1 - w) * z_default, with w = sigmoid(logit).

    Arguments:
      learned (torch.Tensor): Kx... learnable prompts (K prompts or classes).
      default (torch.Tensor): Kx... default prompts, same shape.
      logit (torch.Tensor): K weight logits, one per prompt or class.

    Returns:
      (torch.Tensor): Kx... fused prompts.
    """
    weight = torch.sigmoid(logit).reshape(-1, *([1] * (learned.dim() - 1)))
    return weight * learned + (1 - weight) * default


def grid_points(side: int, image_size: int) -> torch.Tensor:
    """Centres of a side x side grid over the square model input, as (x, y) pixel coordinates.

    Returns:
      (torch.Tensor): (side*side)x2, row-major from the top-left.
    """
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) * (image_size / side)
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def mask_class_logits(
    masks: torch.Tensor, features: torch.Tensor, semantic: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Mask-pool dense CLIP features and compare them with the semantic prompts by cosine.

    Arguments:
      masks (torch.Tensor): BxNxmxm mask logits.
      features (torch.Tensor): BxDxgxg dense CLIP features; g divides m.
      semantic (torch.Tensor): CxD semantic prompts (normalised here).
      logit_scale (torch.Tensor): scalar, CLIP's exp(logit_scale).

    Returns:
      (torch.Tensor): BxNxC class logits.
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
      masks (torch.Tensor): BxNxHxW mask logits.
      iou (torch.Tensor): BxN IoU estimates.
      class_logits (torch.Tensor): BxNxC.

    Returns:
      (torch.Tensor): BxCxHxW class probabilities (sum to 1 over C).
    """
    height, width = masks.shape[-2:]
    num_classes = class_logits.shape[-1]
    weights = class_logits.softmax(-1) * iou.clamp(0.0, 1.0).unsqueeze(-1)  # (B, N, C)
    scores = weights.transpose(1, 2) @ masks.sigmoid().flatten(2)  # (B, C, H*W)
    scores = scores.reshape(-1, num_classes, height, width)  # -1: the exporter keeps the batch axis symbolic
    return (scores + _EPS) / (scores.sum(1, keepdim=True) + num_classes * _EPS)


@torch.no_grad()
def default_semantic_prompts(clip: nn.Module, tokenizer, class_names: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings of each class name, averaged over the 80 ImageNet templates, L2-normalised.

    Returns:
      (torch.Tensor): CxD.
    """
    from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

    device = next(clip.parameters()).device
    weights = build_zero_shot_classifier(
        clip, tokenizer, list(class_names), OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=4, device=device
    )  # (D, C)
    return weights.t().contiguous()


@dataclass
class Prediction:
    masks: torch.Tensor  # BxNxmxm mask logits
    iou: torch.Tensor  # BxN IoU estimates
    class_logits: torch.Tensor  # BxNxC
    semantic: torch.Tensor  # BxCxmxm class probabilities


class SSPrompt(nn.Module):
    """Learnable prompts around a frozen SAM + CLIP.

    Learnables: learned_spatial (NxTxE), spatial_logit (N), learned_semantic (CxD),
    semantic_logit (C). Everything else is a frozen module or a buffer.
    """

    learnable_names = ("learned_spatial", "spatial_logit", "learned_semantic", "semantic_logit")

    def __init__(
        self,
        backbones: Backbones,
        class_names: Sequence[str],
        config: ModelConfig,
        default_semantic: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
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

        # Learnables start at the defaults, with weights sigmoid(0) = 0.5; only SSPrompt trains them.
        ssprompt = config.method == "ssprompt"
        learn_spatial = ssprompt and config.learn_spatial
        learn_semantic = ssprompt and config.learn_semantic
        self.learned_spatial = nn.Parameter(default_spatial.clone(), requires_grad=learn_spatial)
        self.spatial_logit = nn.Parameter(torch.zeros(points.shape[0]), requires_grad=learn_spatial and config.learn_weights)
        self.learned_semantic = nn.Parameter(default_semantic.clone(), requires_grad=learn_semantic)
        self.semantic_logit = nn.Parameter(
            torch.zeros(len(self.class_names)), requires_grad=learn_semantic and config.learn_weights
        )
        self.prompt_names: tuple[str, ...] = self.learnable_names  # every prompt tensor packs and checkpoints keep
        if config.method == "coop":
            self.coop = CoOpTextEncoder(backbones.clip, backbones.tokenizer, self.class_names, config.coop_init, config.coop_context)
            self.prompt_names += ("coop.context",)
        elif config.method == "vspl":
            # (N, 2) logits of the points' (x, y) as fractions of the square input: a point can move anywhere
            # inside it and never gets stuck at the border, as it would behind a clamp.
            self.point_logits = nn.Parameter(torch.logit(points / self.image_size))
            self.prompt_names += ("point_logits",)

    @property
    def num_prompts(self) -> int:
        return self.default_spatial.shape[0]

    @property
    def clip_input_size(self) -> int:
        return self.clip_dense.input_size

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.get_parameter(n) for n in self.prompt_names) if p.requires_grad]

    def fused_spatial(self) -> torch.Tensor:
        """NxTxE fused spatial prompts."""
        return fuse_prompts(self.learned_spatial, self.default_spatial, self.spatial_logit)

    def fused_semantic(self) -> torch.Tensor:
        """CxD fused semantic prompts (not normalised)."""
        return fuse_prompts(self.learned_semantic, self.default_semantic, self.semantic_logit)

    def point_coords(self) -> torch.Tensor:
        """VSPL: Nx2 learned (x, y) pixel coordinates on the square input."""
        return torch.sigmoid(self.point_logits) * self.image_size

    def spatial_prompts(self) -> torch.Tensor:
        """NxTxE prompts for SAM's decoder: fused (ssprompt), embedded learned points (vspl) or defaults."""
        if self.config.method == "vspl":
            return embed_points(self.sam.prompt_encoder, self.point_coords())
        return self.fused_spatial() if self.config.method == "ssprompt" else self.default_spatial

    def semantic_prompts(self) -> torch.Tensor:
        """CxD prompts for the mask classifier (not normalised): fused (ssprompt), CoOp's text (coop) or defaults."""
        if self.config.method == "coop":
            return self.coop()
        return self.fused_semantic() if self.config.method == "ssprompt" else self.default_semantic

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen encoders.

        Arguments:
          images (torch.Tensor): BxSxSx3 uint8, letterboxed to SAM's square input S.

        Returns:
          (torch.Tensor): BxEx(h)x(w) SAM image embeddings.
          (torch.Tensor): BxDxgxg dense CLIP features.
        """
        return self.encode_images(images)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` without no_grad, for export tracing and encoder-in-the-loop training."""
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, S, S)
        sam_embeddings = self.sam.image_encoder((x - self.sam.pixel_mean) / self.sam.pixel_std)
        clip_size = self.clip_dense.input_size
        if clip_size != x.shape[-1]:
            x = F.interpolate(x, size=(clip_size, clip_size), mode="bilinear", align_corners=False)
        clip_features = self.clip_dense((x - self.clip_mean) / self.clip_std)
        return sam_embeddings, clip_features

    def decode(self, sam_embeddings: torch.Tensor, spatial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (BxNxmxm) and IoU (BxN) for every image and spatial prompt (NxTxE).

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
          sam_embeddings (torch.Tensor): BxEx(h)x(w) from `encode`.
          clip_features (torch.Tensor): BxDxgxg from `encode`.

        Returns:
          (Prediction): masks BxNxmxm, iou BxN, class_logits BxNxC, semantic BxCxmxm.
        """
        masks, iou = self.decode(sam_embeddings, self.spatial_prompts())
        logits = mask_class_logits(masks, clip_features, self.semantic_prompts(), self.logit_scale)
        return Prediction(masks, iou, logits, semantic_map(masks, iou, logits))
