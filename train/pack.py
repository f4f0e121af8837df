"""The prompt pack (pack.pt): fused prompts, raw learnables, defaults and provenance.

A `torch.save`d dict of tensors and plain Python values, loadable with
`torch.load(..., weights_only=True)`; see ../shared/design.md for the contents.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ssprompt.runtime.files import atomic_path
from ssprompt.runtime.images import brief

from .config import METHODS

__all__ = ["PACK_FORMAT", "PACK_FORMAT_VERSION", "PackError", "build_pack", "save_pack", "load_pack", "load_tensors",
           "check_pack_fits", "package_version", "atomic_torch_save"]

PACK_FORMAT = "ssprompt.pack"
PACK_FORMAT_VERSION = 2  # 2: model_config.method and the baselines' learnables; version 1 packs read as ssprompt
_READABLE_VERSIONS = (1, 2)

_TENSORS = (
    "fused_spatial",
    "fused_semantic",
    "learned_spatial",
    "spatial_logit",
    "default_spatial",
    "learned_semantic",
    "semantic_logit",
    "default_semantic",
    "grid_points",
)
_REQUIRED = _TENSORS + ("format", "format_version", "class_names", "palette", "void", "backbones", "model_config", "train_config", "metrics")


class PackError(ValueError):
    """A pack file that cannot be used; the message is one line naming the file."""


def package_version() -> str:
    try:
        return version("ssprompt")
    except PackageNotFoundError:
        return "0+unknown"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def build_pack(model, backbones, palette: list[list[int]], void: int, train_config: dict, metrics: dict) -> dict:
    """Everything export and evaluation need from a trained `SSPrompt`, as plain values and tensors."""
    from dataclasses import asdict

    with torch.no_grad():
        tensors = {
            "fused_spatial": model.spatial_prompts(),  # what the decoder and the classifier get, whatever the method
            "fused_semantic": model.semantic_prompts(),
            "learned_spatial": model.learned_spatial,
            "spatial_logit": model.spatial_logit,
            "default_spatial": model.default_spatial,
            "learned_semantic": model.learned_semantic,
            "semantic_logit": model.semantic_logit,
            "default_semantic": model.default_semantic,
            "grid_points": model.grid_points,
        }
        tensors.update({n: model.get_parameter(n) for n in model.prompt_names if n not in tensors})  # a baseline's own
    return {
        "format": PACK_FORMAT,
        "format_version": PACK_FORMAT_VERSION,
        **{k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
        "class_names": list(model.class_names),
        "palette": [list(map(int, c)) for c in palette],
        "void": int(void),
        "backbones": backbones.identity(),
        "image_size": int(model.image_size),
        "clip_input_size": int(model.clip_input_size),
        "model_config": asdict(model.config),
        "train_config": dict(train_config),
        "metrics": dict(metrics),
        "ssprompt_version": package_version(),
    }


def save_pack(pack: dict, path: str | Path) -> None:
    atomic_torch_save(pack, path)


def load_pack(path: str | Path) -> dict:
    """Load and check a pack; never unpickles arbitrary objects.

    Raises:
      PackError: unreadable or truncated file, wrong format or version, missing keys,
        or tensors whose shapes disagree with each other.
    """
    path = Path(path)
    if not path.is_file():
        raise PackError(f"{path}: pack not found")
    pack = load_tensors(path, PackError, "pack")
    if not isinstance(pack, dict) or pack.get("format") != PACK_FORMAT:
        raise PackError(f"{path}: not an ssprompt pack (no format {PACK_FORMAT!r})")
    if pack.get("format_version") not in _READABLE_VERSIONS:
        raise PackError(
            f"{path}: pack format version {brief(pack.get('format_version'))}, this ssprompt reads versions "
            f"{', '.join(map(str, _READABLE_VERSIONS))}"
        )
    missing = [k for k in _REQUIRED if k not in pack]
    if missing:
        raise PackError(f"{path}: pack lacks {', '.join(missing)}")
    _check_values(path, pack)
    for name in _TENSORS:
        if not isinstance(pack[name], torch.Tensor):
            raise PackError(f"{path}: {name} is not a tensor")
        if not pack[name].is_floating_point() or not bool(torch.isfinite(pack[name]).all()):
            raise PackError(f"{path}: {name} holds NaN, infinite or non-float values")
    _check_shapes(path, pack)
    return pack


def load_tensors(path: Path, error: type[Exception], what: str):
    """`torch.load(path, weights_only=True)`: tensors and plain values only, never code.

    Raises `error` with one line naming the file: a pickled object other than tensors and plain
    values is refused as such; anything else that does not load is a damaged file.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            raise error(f"{path}: holds pickled Python objects besides tensors and plain values; refused, as a {what} "
                        "never runs code when loaded") from None
        raise error(f"{path}: not a readable {what} (damaged or not a torch.save file)") from None
    except Exception:  # noqa: BLE001 - zip errors, EOF, bad headers: a damaged file
        raise error(f"{path}: not a readable {what} (truncated, damaged or not a torch.save file)") from None


def _check_values(path: Path, pack: dict) -> None:
    """Plain values, before anything reads them: the configs as dicts, class names, palette colours in 0..255, void."""
    for name in ("backbones", "model_config", "train_config", "metrics"):
        if not isinstance(pack[name], dict):
            raise PackError(f"{path}: {name} must be a dict")
    names = pack["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise PackError(f"{path}: class_names must be a list of non-empty strings")
    if not isinstance(pack["palette"], list):
        raise PackError(f"{path}: palette must be a list of colours")
    for i, colour in enumerate(pack["palette"]):
        if not (isinstance(colour, (list, tuple)) and len(colour) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
            raise PackError(f"{path}: palette colour {i} is {brief(colour)}; a colour is three integers in 0..255")
    if not isinstance(pack["void"], int) or not 0 <= pack["void"] <= 65535:
        raise PackError(f"{path}: void must be an integer label value, got {brief(pack['void'])}")


def check_pack_fits(pack: dict, source: str | Path, prompt_width: int, semantic_width: int) -> None:
    """The pack's prompt widths against the backbones it is about to be loaded into.

    Arguments:
      prompt_width: E, SAM's prompt embedding width (the spatial prompts' last axis).
      semantic_width: D, CLIP's joint embedding width (the semantic prompts' last axis).
    """
    spatial, semantic = pack["fused_spatial"].shape[-1], pack["fused_semantic"].shape[-1]
    if spatial != prompt_width:
        raise PackError(f"{source}: spatial prompts are {spatial} wide; this SAM's prompt encoder embeds in {prompt_width}")
    if semantic != semantic_width:
        raise PackError(f"{source}: semantic prompts are {semantic} wide; this CLIP embeds in {semantic_width}")


def _check_shapes(path: Path, pack: dict) -> None:
    spatial = pack["fused_spatial"]
    semantic = pack["fused_semantic"]
    if spatial.dim() != 3 or semantic.dim() != 2:
        raise PackError(f"{path}: fused_spatial must be NxTxE and fused_semantic CxD, got {tuple(spatial.shape)} and {tuple(semantic.shape)}")
    n, c = spatial.shape[0], semantic.shape[0]
    expected = {
        "learned_spatial": tuple(spatial.shape),
        "default_spatial": tuple(spatial.shape),
        "spatial_logit": (n,),
        "learned_semantic": tuple(semantic.shape),
        "default_semantic": tuple(semantic.shape),
        "semantic_logit": (c,),
        "grid_points": (n, 2),
    }
    for name, shape in expected.items():
        if tuple(pack[name].shape) != shape:
            raise PackError(f"{path}: {name} has shape {tuple(pack[name].shape)}, expected {shape}")
    method = pack["model_config"].get("method", "ssprompt")
    if method not in METHODS:
        raise PackError(f"{path}: unknown method {brief(method)} (this ssprompt knows {', '.join(METHODS)})")
    method_tensors = {"coop": {"coop.context": (None, None)}, "vspl": {"point_logits": (n, 2)}}  # None: any size
    for name, shape in method_tensors.get(method, {}).items():
        tensor = pack.get(name)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != len(shape) or any(
            want is not None and got != want for got, want in zip(tensor.shape, shape)
        ):
            want = "x".join("?" if d is None else str(d) for d in shape)
            raise PackError(f"{path}: a {method} pack needs {name}, a {want} tensor")
    if len(pack["class_names"]) != c:
        raise PackError(f"{path}: {len(pack['class_names'])} class names for {c} semantic prompts")
    if len(pack["palette"]) != c:
        raise PackError(f"{path}: {len(pack['palette'])} palette colours for {c} classes")
