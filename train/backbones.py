"""Frozen SAM and CLIP backbones: builders, offline checkpoint loading and digests.

SAM comes from segment-anything (`vit_b`, `vit_l`, `vit_h` from a checkpoint file) or the
built-in `tiny` config; CLIP from open_clip (any model name with a pretrained tag or weights
file) or the built-in `tiny` config. `tiny` loads the weights ssp-pretrain made on the
miniature world (train/weights/, checked against their sha256). `random_weights=True` builds
are random-initialised from a fixed seed, so the same build gives the same weights (and
digest) in training, evaluation and export.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ssprompt.runtime.errors import SSPromptError
from ssprompt.runtime.files import file_sha256  # noqa: F401 - imported from here by train and export
from ssprompt.runtime.images import error_reason

__all__ = [
    "BackboneError",
    "Backbones",
    "SAM_BUILDERS",
    "SAM_CHECKPOINT_FILES",
    "TINY_WEIGHT_FILES",
    "seeded_build",
    "shipped_tiny_weights",
    "build_sam",
    "build_clip",
    "load_backbones",
    "file_sha256",
    "weights_sha256",
    "freeze",
]

TINY_CLIP_NAME = "ssp-tiny-clip"
_CONFIG_DIR = Path(__file__).parent / "configs"
_WEIGHTS_DIR = Path(__file__).parent / "weights"
TINY_WEIGHT_FILES = {"sam": "tiny_sam.pt", "clip": "tiny_clip.pt"}  # written by ssp-pretrain, beside tiny.json
_INIT_SEED = 0
_TINY_MASK_GAIN = 80.0  # brings the tiny decoder's mask-logit spread to about 3

# Official release file names; their download location is in segment-anything's README.
SAM_CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


class BackboneError(SSPromptError, RuntimeError):
    """A backbone cannot be built or loaded; the message is one line saying what to do."""


def weights_sha256(module: nn.Module) -> str:
    """Digest of a module's state dict (names, dtypes, shapes, values); identifies random-init weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _build_tiny_sam() -> nn.Module:
    """A 2-block SAM with a 256-pixel input and 128-wide prompts: 16x16 image embeddings, 64x64 mask logits."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_size, patch, dim = 256, 16, 128
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=4,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=256, num_heads=4),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=128,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _registry_builder(sam_type: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from segment_anything import sam_model_registry

        return sam_model_registry[sam_type](checkpoint=None)

    return build


def _build_tiny_sam_calibrated() -> nn.Module:
    """The tiny SAM, its random output heads moved into the range of a trained SAM's.

    A trained SAM answers with confident masks (logits of several units) and IoU estimates
    in (0, 1). A random decoder gives near-constant logits (about 0.04 spread) and IoU
    estimates around 0, which leaves every prompt with the same mask and, after the
    semantic map's clamp of q to [0, 1], with no weight: nothing could learn from that.
    """
    sam = _build_tiny_sam()
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(0.5)
        hyper = sam.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
        hyper.weight.mul_(_TINY_MASK_GAIN)
        hyper.bias.mul_(_TINY_MASK_GAIN)
    return sam


SAM_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "tiny": _build_tiny_sam,
    "vit_b": _registry_builder("vit_b"),
    "vit_l": _registry_builder("vit_l"),
    "vit_h": _registry_builder("vit_h"),
}


def seeded_build(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` under the fixed initialisation seed, the caller's torch random state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        return build()


def shipped_tiny_weights(name: str) -> Path:
    """The pretrained tiny weights file of `name` (sam or clip), checked against tiny.json's sha256."""
    path = _WEIGHTS_DIR / TINY_WEIGHT_FILES[name]
    record_path = _WEIGHTS_DIR / "tiny.json"
    if not path.is_file() or not record_path.is_file():
        raise BackboneError(f"{path}: the pretrained tiny {name.upper()} is missing; run "
                            f"`ssp-pretrain --out {_WEIGHTS_DIR}` or pass --random-weights")
    expected = json.loads(record_path.read_text(encoding="utf-8"))[name]["sha256"]
    if file_sha256(path) != expected:
        raise BackboneError(f"{path}: sha256 differs from {record_path.name}'s; the file is damaged, "
                            f"reinstall ssprompt or rerun ssp-pretrain --out {_WEIGHTS_DIR}")
    return path


def build_sam(sam_type: str, checkpoint: str | Path | None = None, random_weights: bool = False) -> tuple[nn.Module, str]:
    """Build a frozen SAM.

    Arguments:
      sam_type (str): one of SAM_BUILDERS.
      checkpoint (path or None): segment-anything checkpoint file; tiny defaults to its pretrained weights.
      random_weights (bool): random-initialise instead (full-size benchmarks and export tests, the
        random tiny SAM with its heads calibrated as in `_build_tiny_sam_calibrated`).

    Returns:
      (nn.Module): segment_anything Sam, eval mode, requires_grad False.
      (str): sha256 of the checkpoint file, or of the random weights.
    """
    if sam_type not in SAM_BUILDERS:
        raise BackboneError(f"unknown SAM type {sam_type!r}; choose one of {', '.join(SAM_BUILDERS)}")
    if checkpoint is None and sam_type == "tiny" and not random_weights:
        checkpoint = shipped_tiny_weights("sam")
    if checkpoint is None and not random_weights:
        raise BackboneError(
            f"SAM {sam_type} needs its checkpoint: download {SAM_CHECKPOINT_FILES[sam_type]} "
            "(segment-anything release) and pass it with --sam-checkpoint FILE"
        )
    if checkpoint is None:
        sam = seeded_build(_build_tiny_sam_calibrated if sam_type == "tiny" else SAM_BUILDERS[sam_type])
        return freeze(sam), weights_sha256(sam)
    sam = seeded_build(SAM_BUILDERS[sam_type])
    path = Path(checkpoint)
    if not path.is_file():
        raise BackboneError(f"{path}: SAM checkpoint not found (expected {SAM_CHECKPOINT_FILES.get(sam_type, 'a .pth file')})")
    from .pack import load_tensors

    state = load_tensors(path, BackboneError, "SAM checkpoint")
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: not a SAM checkpoint (holds a {type(state).__name__}, not a state dict)")
    try:
        sam.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - missing keys, wrong shapes, non-tensor values
        raise BackboneError(f"{path}: weights do not fit SAM {sam_type} ({error_reason(err)})") from None
    return freeze(sam), file_sha256(path)


def _register_tiny_clip() -> None:
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR / f"{TINY_CLIP_NAME}.json")


def build_clip(name: str, pretrained: str | Path | None = None, random_weights: bool = False) -> tuple[nn.Module, Callable, str]:
    """Build a frozen open_clip model.

    Arguments:
      name (str): open_clip model name (e.g. ViT-B-16), or `tiny`.
      pretrained (str, path or None): open_clip pretrained tag (e.g. openai) or a weights file;
        tiny defaults to its pretrained weights.
      random_weights (bool): random-initialise instead.

    Returns:
      (nn.Module): open_clip CLIP, eval mode, requires_grad False.
      (Callable): its tokenizer.
      (str): sha256 of the weights file, or of the random weights.
    """
    import open_clip

    model_name = TINY_CLIP_NAME if name == "tiny" else name
    if name == "tiny":
        _register_tiny_clip()
    if model_name not in open_clip.list_models():
        raise BackboneError(f"unknown CLIP model {name!r}; see open_clip.list_models() or use tiny")
    weights_file: Path | None = None
    quick_gelu = False
    if name == "tiny" and pretrained is None and not random_weights:
        pretrained = shipped_tiny_weights("clip")
    if pretrained is not None:
        if Path(pretrained).is_file():
            weights_file = Path(pretrained)
        else:
            weights_file = _cached_clip_weights(model_name, str(pretrained))
            quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, str(pretrained)).get("quick_gelu", False))
    elif not random_weights:
        raise BackboneError(
            f"CLIP {name} needs weights: pass --clip-pretrained TAG (one of "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none known'}) or a weights FILE"
        )

    def build() -> nn.Module:
        if pretrained is None:  # open_clip logs a warning for the random init we asked for
            logging.disable(logging.WARNING)
        try:
            return open_clip.create_model(
                model_name,
                pretrained=str(weights_file) if weights_file is not None else None,
                force_quick_gelu=quick_gelu,
            )
        finally:
            logging.disable(logging.NOTSET)

    try:
        model = seeded_build(build)
    except Exception as err:  # torch / safetensors raise several types for a bad file
        raise BackboneError(f"{pretrained}: cannot load CLIP {name} weights ({error_reason(err)})") from None
    tokenizer = open_clip.get_tokenizer(model_name)
    digest = file_sha256(weights_file) if weights_file is not None else weights_sha256(model)
    return freeze(model), tokenizer, digest


def _cached_clip_weights(model_name: str, tag: str) -> Path:
    """Path of an open_clip pretrained tag's weights in the local caches; never downloads."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise BackboneError(
            f"{tag}: neither a file nor a pretrained tag of {model_name} "
            f"(tags: {', '.join(list_pretrained_tags_by_model(model_name)) or 'none'})"
        )
    candidates: list[Path] = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id = cfg["hf_hub"].rstrip("/")
        names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if repo_id.count("/") > 1:  # "org/repo/file"
            repo_id, _, file_name = repo_id.rpartition("/")
            names = [file_name]
        for file_name in names:
            hit = try_to_load_from_cache(repo_id, file_name)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    if cfg.get("url"):
        candidates.append(Path("~/.cache/clip").expanduser() / Path(cfg["url"]).name)
    for path in candidates:
        if path.is_file():
            return path
    source = cfg.get("hf_hub") or cfg.get("url")
    raise BackboneError(
        f"CLIP weights {model_name}/{tag} are not in the local cache and ssprompt does not download: "
        f"fetch them from {source} and pass the file with --clip-pretrained FILE"
    )


@dataclass
class Backbones:
    """The frozen models a prompt pack was trained against, with their identities."""

    sam: nn.Module  # segment_anything Sam
    sam_type: str  # tiny, vit_b, vit_l or vit_h
    sam_sha256: str  # checkpoint file digest, or weights digest when random-initialised
    clip: nn.Module  # open_clip CLIP
    tokenizer: Callable  # open_clip tokenizer of `clip`
    clip_name: str  # open_clip model name, or tiny
    clip_pretrained: str | None  # tag or file the weights came from
    clip_sha256: str  # weights file digest, or weights digest when random-initialised

    def identity(self) -> dict:
        return {
            "sam_type": self.sam_type,
            "sam_sha256": self.sam_sha256,
            "clip_name": self.clip_name,
            "clip_pretrained": self.clip_pretrained,
            "clip_sha256": self.clip_sha256,
        }


def load_backbones(
    sam_type: str,
    clip_name: str,
    sam_checkpoint: str | Path | None = None,
    clip_pretrained: str | Path | None = None,
    random_weights: bool = False,
) -> Backbones:
    sam, sam_digest = build_sam(sam_type, sam_checkpoint, random_weights)
    clip, tokenizer, clip_digest = build_clip(clip_name, clip_pretrained, random_weights)
    return Backbones(sam, sam_type, sam_digest, clip, tokenizer, clip_name,
                     None if clip_pretrained is None else str(clip_pretrained), clip_digest)
