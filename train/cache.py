"""On-disk cache of frozen-encoder outputs, keyed by image content, flip and backbones."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .pack import atomic_torch_save

__all__ = ["FeatureCache", "default_cache_dir"]

_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSPROMPT_CACHE", Path.home() / ".cache" / "ssprompt"))


class FeatureCache:
    """SAM image embeddings and dense CLIP features, one file per (image, flip).

    Entries live under `directory/<encoder key>/`, where the encoder key digests every
    input the encoders' output depends on besides the image: backbone weights, input
    sizes and padding. A changed backbone therefore never reads a stale entry.
    """

    def __init__(self, directory: str | Path, encoder_identity: dict) -> None:
        identity = json.dumps({"format": _CACHE_FORMAT, **encoder_identity}, sort_keys=True)
        self.directory = Path(directory) / hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.hits = 0
        self.misses = 0

    @staticmethod
    def image_digest(image_path: str | Path) -> str:
        return hashlib.sha256(Path(image_path).read_bytes()).hexdigest()

    @staticmethod
    def key(image_digest: str, flip: bool) -> str:
        return f"{image_digest}-{'flip' if flip else 'orig'}"

    def load(self, key: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
        """The entry under `key` if it holds exactly the tensors named in `shapes`, of those shapes and
        finite; None (a miss, recomputed and overwritten by the caller) for anything else."""
        path = self.directory / f"{key}.pt"
        entry = None
        if path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
                entry = None
        if not _fits(entry, shapes):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def save(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in entry.items()}, self.directory / f"{key}.pt")


def _fits(entry, shapes: dict[str, tuple[int, ...]]) -> bool:
    return (isinstance(entry, dict) and set(entry) == set(shapes)
            and all(isinstance(entry[k], torch.Tensor) and tuple(entry[k].shape) == tuple(shape)
                    and (not entry[k].is_floating_point() or bool(torch.isfinite(entry[k]).all()))
                    for k, shape in shapes.items()))
