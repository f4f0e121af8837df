"""The prompt pack (pack.pt): the prompts a graph bakes in, the method's learnables, the
defaults they started from, and provenance; one schema, `Pack`.

On disk a `torch.save`d dict of tensors and plain Python values, the fields of `Pack` plus
`format` and `format_version`, loadable with `torch.load(..., weights_only=True)`. Entries are
named by what they hold (`spatial_prompts`, not `fused_spatial`: a baseline's are not fused,
version 3 on), the learnables by the names their method gives them, so renaming a Python
attribute never changes the file, and a method's own options sit in
`model_config["method_options"]` (version 4). Versions 1 to 3 still read.

Shapes: N spatial prompts, T tokens a prompt, E SAM's prompt width, C classes, D CLIP's
joint width.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ssprompt.runtime.errors import SSPromptError
from ssprompt.runtime.files import atomic_path
from ssprompt.runtime.images import brief

from .backbones import BackboneError, Backbones, load_backbones

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["PACK_FORMAT", "PACK_FORMAT_VERSION", "Pack", "PackError", "build_pack", "save_pack", "load_pack", "load_tensors",
           "check_pack_fits", "load_pack_backbones", "package_version", "atomic_torch_save", "tensor_problem", "TENSOR_DTYPES"]

PACK_FORMAT = "ssprompt.pack"
PACK_FORMAT_VERSION = 4  # 4: a method's options in model_config.method_options; 3: entries named by what they hold
_READABLE_VERSIONS = (1, 2, 3, 4)


class PackError(SSPromptError, ValueError):
    """A pack file that cannot be used; the message is one line naming the file."""


@dataclass
class Pack:
    method: str  # the method that made it (methods/ registry)
    spatial_prompts: torch.Tensor  # (N, T, E) what SAM's decoder gets; the graph bakes it in
    semantic_prompts: torch.Tensor  # (C, D) what the mask classifier gets (not normalised); the graph bakes it in
    default_spatial: torch.Tensor  # (N, T, E) SAM's prompt-encoder output for the grid points
    default_semantic: torch.Tensor  # (C, D) CLIP's class-name embeddings over the 80 ImageNet templates
    grid_points: torch.Tensor  # (N, 2) (x, y) pixels of the point grid on the square input
    learned: dict[str, torch.Tensor]  # the method's learnables, by the names it stores them under
    class_names: list[str]  # index order of the labels
    palette: list[list[int]]  # one RGB colour a class, 0..255
    void: int  # the label value ignored in training and metrics
    backbones: dict  # SAM and CLIP names, checkpoints and sha256 (Backbones.identity)
    model_config: dict  # ModelConfig as a dict, the method's options under method_options
    train_config: dict  # TrainConfig as a dict
    metrics: dict  # held-out metrics after training
    image_size: int = 0  # S, SAM's square input (0: not recorded, as in version 1 packs)
    clip_input_size: int = 0  # the side CLIP sees
    ssprompt_version: str = field(default="0+unknown")
    thing_classes: list[int] = field(default_factory=list)  # countable classes (classes.txt's [thing]); none in older packs


_TENSORS = ("spatial_prompts", "semantic_prompts", "default_spatial", "default_semantic", "grid_points")
TENSOR_DTYPES = (torch.float32, torch.float16)  # what packs and checkpoints hold (float16: a pack halved for shipping)


def tensor_problem(value, shape: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with a tensor read from a pack or checkpoint, or None: it must be a dense, strided
    float32 or float16 tensor, finite, and of `shape` where one is given (no axis of length 0)."""
    if not isinstance(value, torch.Tensor):
        return f"is {type(value).__name__}, not a tensor"
    if value.layout != torch.strided or value.is_quantized or value.is_nested:
        return f"is a {value.layout} tensor, not a dense one"
    if value.dtype not in TENSOR_DTYPES:
        return f"is {str(value.dtype).removeprefix('torch.')}; expected float32 or float16"
    if shape is not None and tuple(value.shape) != tuple(shape):
        return f"has shape {tuple(value.shape)}, expected {tuple(shape)}"
    if 0 in value.shape:
        return f"is empty (shape {tuple(value.shape)})"
    if not bool(torch.isfinite(value).all()):
        return "holds NaN or infinite values"
    return None


def package_version() -> str:
    try:
        return version("ssprompt")
    except PackageNotFoundError:
        return "0+unknown"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file.

    Saved through an open file, not a path: given a path, torch names the archive's folder after
    the (random) temporary name, and equal contents would not give equal files.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def build_pack(model, backbones, palette: list[list[int]], void: int, train_config: dict, metrics: dict,
               thing_classes: Sequence[int] = ()) -> Pack:
    """Everything export and evaluation need from a trained model (train/model.py SSPrompt)."""
    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().clone().contiguous()

    with torch.no_grad():
        return Pack(
            method=model.config.method,
            spatial_prompts=plain(model.spatial_prompts()),
            semantic_prompts=plain(model.semantic_prompts()),
            default_spatial=plain(model.default_spatial),
            default_semantic=plain(model.default_semantic),
            grid_points=plain(model.grid_points),
            learned={name: plain(p) for name, p in model.learned().items()},
            class_names=list(model.class_names),
            palette=[list(map(int, c)) for c in palette],
            void=int(void),
            backbones=backbones.identity(),
            model_config=asdict(model.config),
            train_config=dict(train_config),
            metrics=dict(metrics),
            image_size=int(model.image_size),
            clip_input_size=int(model.clip_input_size),
            ssprompt_version=package_version(),
            thing_classes=sorted(int(c) for c in thing_classes),
        )


def save_pack(pack: Pack, path: str | Path) -> None:
    atomic_torch_save({"format": PACK_FORMAT, "format_version": PACK_FORMAT_VERSION,
                       **{f.name: getattr(pack, f.name) for f in fields(Pack)}}, path)


def load_tensors(path: Path, error: type[Exception], what: str):
    """`torch.load(path, weights_only=True)`: tensors and plain values only, never code.

    Raises `error` with one line naming the file: a pickled object other than tensors and plain
    values is refused as such; anything else that does not load is a damaged file.
    """
    import pickle

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror or err})") from None
    # torch.save writes a zip archive (PK..); the legacy format starts with a pickle protocol byte.
    if not head.startswith((b"PK", b"\x80")):
        raise error(f"{path}: not a {what} (not a file written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            raise error(f"{path}: holds pickled Python objects besides tensors and plain values; refused, as a {what} "
                        "never runs code when loaded") from None
        raise error(f"{path}: not a readable {what} (damaged or not a torch.save file)") from None
    except Exception:  # noqa: BLE001 - zip errors, EOF, bad headers: a damaged file
        raise error(f"{path}: not a readable {what} (truncated, damaged or not a torch.save file)") from None


# Version 2 stored every method's prompts under SSPrompt's attribute names, and a baseline's own
# learnables under its attribute path. Version 1 was SSPrompt only.
_V2_SSPROMPT = {"spatial_embedding": "learned_spatial", "spatial_weight_logit": "spatial_logit",
                "semantic_embedding": "learned_semantic", "semantic_weight_logit": "semantic_logit"}
_V2_BASELINE = {"coop": {"context": "coop.context"}, "vspl": {"point_logits": "point_logits"}, "zero-shot": {}}


def _upgrade_names(raw: dict, path: Path) -> dict:
    """A version 1 or 2 pack's dict in version 3's names."""
    model_config = raw.get("model_config")
    method = model_config.get("method", "ssprompt") if isinstance(model_config, dict) else "ssprompt"
    names = _V2_SSPROMPT if method == "ssprompt" else _V2_BASELINE.get(method)
    if names is None:
        raise PackError(f"{path}: a version {raw['format_version']} pack of unknown method {brief(method)}")
    missing = [old for old in ("fused_spatial", "fused_semantic", *names.values()) if old not in raw]
    if missing:
        raise PackError(f"{path}: pack lacks {', '.join(missing)}")
    upgraded = {k: v for k, v in raw.items() if k not in ("fused_spatial", "fused_semantic", *_V2_SSPROMPT.values(),
                                                          "coop.context", "point_logits")}
    upgraded.update(method=method, spatial_prompts=raw["fused_spatial"], semantic_prompts=raw["fused_semantic"],
                    learned={new: raw[old] for new, old in names.items()})
    return upgraded


# Version 3 and older kept CoOp's and SSPrompt's options among model_config's own keys.
_V3_OPTIONS = ("coop_init", "coop_context", "learn_spatial", "learn_semantic", "learn_weights")


def _upgrade_options(raw: dict, path: Path) -> dict:
    """A version 1 to 3 pack's dict with its method's options in model_config.method_options (version 4)."""
    config = raw.get("model_config")
    if not isinstance(config, dict):
        return raw  # refused as such by _check_values
    old = {key: config[key] for key in _V3_OPTIONS if key in config}
    for key in ("learn_spatial", "learn_semantic", "learn_weights"):
        if not isinstance(old.get(key, True), bool):
            raise PackError(f"{path}: model_config: {key} is {brief(old[key])}, expected bool")
    if raw.get("method") == "ssprompt":
        spatial, semantic = old.get("learn_spatial", True), old.get("learn_semantic", True)
        if not (spatial or semantic):
            raise PackError(f"{path}: model_config learns neither the spatial nor the semantic prompts")
        options = {"learn": "both" if spatial and semantic else "spatial" if spatial else "semantic",
                   "fixed_weights": not old.get("learn_weights", True)}
    elif raw.get("method") == "coop":
        init = old.get("coop_init", "a photo of a")
        options = {"init": init, "context": None if init else old.get("coop_context", 16)}
    else:
        options = {}
    kept = {key: value for key, value in config.items() if key not in _V3_OPTIONS}
    return {**raw, "model_config": {**kept, "method_options": options}}


def load_pack(path: str | Path) -> Pack:
    """Load and check a pack; never unpickles arbitrary objects.

    Raises:
      PackError: unreadable or truncated file, wrong format or version, missing entries,
        values of the wrong type, non-finite tensors, or shapes that disagree with each other.
    """
    path = Path(path)
    if not path.is_file():
        raise PackError(f"{path}: pack not found")
    raw = load_tensors(path, PackError, "pack")
    if not isinstance(raw, dict) or raw.get("format") != PACK_FORMAT:
        raise PackError(f"{path}: not an ssprompt pack (no format {PACK_FORMAT!r})")
    if raw.get("format_version") not in _READABLE_VERSIONS:
        raise PackError(f"{path}: pack format version {brief(raw.get('format_version'))}, this ssprompt reads versions "
                        f"{', '.join(map(str, _READABLE_VERSIONS))}")
    values = raw if raw["format_version"] >= 3 else _upgrade_names(raw, path)
    values = values if raw["format_version"] >= 4 else _upgrade_options(values, path)
    required = [f.name for f in fields(Pack) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise PackError(f"{path}: pack lacks {', '.join(missing)}")
    pack = Pack(**{f.name: values[f.name] for f in fields(Pack) if f.name in values})
    _check_values(path, pack)
    _check_configs(path, pack)
    _check_tensors(path, pack)
    return pack


def _check_configs(path: Path, pack: Pack) -> None:
    """model_config and train_config typed, and as their dataclasses accept them."""
    from .config import ModelConfig, TrainConfig, config_from_dict

    for name, cls in (("model_config", ModelConfig), ("train_config", TrainConfig)):
        try:
            config_from_dict(cls, getattr(pack, name))
        except (TypeError, ValueError) as err:
            raise PackError(f"{path}: {name}: {' '.join(str(err).split())}") from None


def _check_values(path: Path, pack: Pack) -> None:
    """Plain values, before anything reads them: the configs as dicts, class names, palette colours in 0..255, void."""
    for name in ("backbones", "model_config", "train_config", "metrics", "learned"):
        if not isinstance(getattr(pack, name), dict):
            raise PackError(f"{path}: {name} must be a dict")
    if not isinstance(pack.method, str) or not pack.method:
        raise PackError(f"{path}: method must be a name, got {brief(pack.method)}")
    names = pack.class_names
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise PackError(f"{path}: class_names must be a list of non-empty strings")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PackError(f"{path}: class name {brief(repeated[0])} appears more than once; class names must be distinct")
    if not isinstance(pack.palette, list):
        raise PackError(f"{path}: palette must be a list of colours")
    for i, colour in enumerate(pack.palette):
        if not (isinstance(colour, (list, tuple)) and len(colour) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
            raise PackError(f"{path}: palette colour {i} is {brief(colour)}; a colour is three integers in 0..255")
    if not isinstance(pack.void, int) or isinstance(pack.void, bool) or not 0 <= pack.void <= 65535:
        raise PackError(f"{path}: void must be an integer label value, got {brief(pack.void)}")
    things = pack.thing_classes
    if not (isinstance(things, list) and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names)
                                             for c in things)):
        raise PackError(f"{path}: thing_classes must be class indices in 0..{len(names) - 1}, got {brief(things)}")


def _check_tensors(path: Path, pack: Pack) -> None:
    """Every tensor dense, float32 or float16 and finite (`tensor_problem`); the shapes consistent with each
    other, with the classes and with the model config's number of prompts."""
    tensors = {name: getattr(pack, name) for name in _TENSORS}
    tensors.update({f"learned {name}": t for name, t in pack.learned.items()})
    for name, tensor in tensors.items():
        problem = tensor_problem(tensor)
        if problem:
            raise PackError(f"{path}: {name} {problem}")
    spatial, semantic = pack.spatial_prompts, pack.semantic_prompts
    if spatial.dim() != 3 or semantic.dim() != 2:
        raise PackError(f"{path}: spatial_prompts must be (N, T, E) and semantic_prompts (C, D), got "
                        f"{tuple(spatial.shape)} and {tuple(semantic.shape)}")
    n, c = spatial.shape[0], semantic.shape[0]
    declared = pack.model_config.get("num_prompts", n)
    if n != declared:
        raise PackError(f"{path}: spatial_prompts holds {n} prompts; model_config.num_prompts says {declared}")
    expected = {"default_spatial": tuple(spatial.shape), "default_semantic": tuple(semantic.shape), "grid_points": (n, 2)}
    for name, shape in expected.items():
        if tuple(getattr(pack, name).shape) != shape:
            raise PackError(f"{path}: {name} has shape {tuple(getattr(pack, name).shape)}, expected {shape}")
    if len(pack.class_names) != c:
        raise PackError(f"{path}: {len(pack.class_names)} class names for {c} semantic prompts")
    if len(pack.palette) != c:
        raise PackError(f"{path}: {len(pack.palette)} palette colours for {c} classes")


def check_pack_fits(pack: Pack, source: str | Path, prompt_width: int, semantic_width: int) -> None:
    """The pack's prompt widths against the backbones it is about to be loaded into.

    Arguments:
      prompt_width: E, SAM's prompt embedding width (the spatial prompts' last axis).
      semantic_width: D, CLIP's joint embedding width (the semantic prompts' last axis).
    """
    spatial, semantic = pack.spatial_prompts.shape[-1], pack.semantic_prompts.shape[-1]
    if spatial != prompt_width:
        raise PackError(f"{source}: spatial prompts are {spatial} wide; this SAM's prompt encoder embeds in {prompt_width}")
    if semantic != semantic_width:
        raise PackError(f"{source}: semantic prompts are {semantic} wide; this CLIP embeds in {semantic_width}")



def load_pack_backbones(pack: Pack, source: str | Path, sam_checkpoint: str | None = None,
                        clip_pretrained: str | None = None, random_weights: bool | None = None,
                        default_prompts: bool = False) -> tuple["ModelConfig", Backbones]:
    """The backbones the pack names (its model config's SAM and CLIP), refused unless the pack's method is registered
    here with its options, the weights are those it was trained against (sha256) and its prompts fit them
    (`check_pack_fits`). With `default_prompts`, the method is zero-shot (nothing of the pack's learning).

    Checkpoints default to the paths recorded in the pack. `source` names the pack (its file) in errors.

    Returns:
      (ModelConfig): the pack's model config, with the method, checkpoints and random_weights that were loaded.
      (Backbones): the loaded backbones.

    Raises:
      PackError: a method (or options) this ssprompt does not know; prompts of another width than the backbones'.
      BackboneError: weights that differ from the pack's, naming the option that picks others.
    """
    from .config import ModelConfig, config_from_dict
    from .methods.registry import get_method
    from .methods.zero_shot import ZERO_SHOT

    config = config_from_dict(ModelConfig, pack.model_config)
    method, options = (ZERO_SHOT.name, {}) if default_prompts else (pack.method, config.method_options)
    try:  # before the backbones, which can take minutes to load
        get_method(method).parse_options(options)
    except (TypeError, ValueError) as err:
        raise PackError(f"{source}: {err}; a newer ssprompt or a plug-in wrote it") from None
    config = replace(
        config,
        method=method,
        method_options=options,
        sam_checkpoint=sam_checkpoint or config.sam_checkpoint,
        clip_pretrained=clip_pretrained or config.clip_pretrained,
        random_weights=config.random_weights if random_weights is None else random_weights,
    )
    backbones = load_backbones(config.sam, config.clip, config.sam_checkpoint, config.clip_pretrained, config.random_weights)
    for name, digest, flag in (("SAM", backbones.sam_sha256, "--sam-checkpoint"), ("CLIP", backbones.clip_sha256, "--clip-pretrained")):
        expected = pack.backbones.get(f"{name.lower()}_sha256")
        if digest != expected:
            raise BackboneError(
                f"{name} weights (sha256 {digest[:12]}) differ from the pack's (sha256 {str(expected)[:12]}); "
                f"pass the {flag} it was trained with"
            )
    visual = backbones.clip.visual
    check_pack_fits(pack, source, backbones.sam.prompt_encoder.embed_dim,
                    getattr(visual, "output_dim", None) or int(visual.proj.shape[1]))
    return config, backbones
