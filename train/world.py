"""The miniature world: generated scenes of coloured, textured shapes, the data the tiny backbones
are pretrained on (train/pretrain.py) and the downstream task the demo and the quality benchmark
learn prompts for.

Pretraining scenes are clean: any colour, shape and texture of the vocabulary on a grey, noisy
background. The downstream task shifts the conditions, as the paper's ACDC does for Cityscapes:
fog, low light or heavy sensor noise, backgrounds of grey patterns never seen in pretraining, and
clutter: distractor objects whose colour or shape differs from every task class, labelled
background. Its classes are four colour-and-shape pairs, so a prompt must tell "red disc" from a
red square nearby.

Shapes: H x W an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ssprompt.runtime.files import write_text_atomic

from .data.classes import THING_MARKER
from .generated import check_generated, write_generated
from .shapes import SHAPES, dilate, shape_mask

__all__ = [
    "COLOURS",
    "TEXTURES",
    "CONDITIONS",
    "TASK_CLASSES",
    "TASK_THINGS",
    "Thing",
    "Scene",
    "draw_things",
    "pretraining_scene",
    "task_scene",
    "caption",
    "make_world",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35),
    "green": (35, 185, 55),
    "blue": (40, 70, 220),
    "yellow": (225, 200, 40),
    "purple": (145, 55, 190),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
CONDITIONS: tuple[str, ...] = ("fog", "night", "noise")  # the downstream shifts; pretraining is clean

# The downstream task: background plus four colour-and-shape pairs; every other pair is clutter.
TASK_CLASSES: tuple[str, ...] = ("background", "red disc", "green square", "blue triangle", "yellow disc")
TASK_THINGS: tuple[str, ...] = TASK_CLASSES[1:]  # countable; background is stuff
_TASK_PAIRS = [tuple(name.split()) for name in TASK_THINGS]
_CLUTTER_PAIRS = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in _TASK_PAIRS]

_GREY = (122, 120, 114)
_TINT = 6.0  # a background grey's per-channel tint, at most
_MIN_VISIBLE = 60  # pixels an instance must keep after occlusion to count


@dataclass
class Thing:
    """One object: what it is and where (its box in pixels)."""

    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES
    texture: str  # one of TEXTURES
    box: tuple[int, int, int, int]  # x0, y0, width, height

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (H, W) int32: 0 background, i + 1 for things[i]; -1 the void ring around each thing
    things: list[Thing]  # the objects still visible, in instance order


def _random_box(rng: np.random.Generator, size: tuple[int, int], side: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = size
    w = int(rng.integers(side[0], side[1] + 1))
    h = int(np.clip(w * rng.uniform(0.75, 1.33), side[0], side[1]))
    w, h = min(w, width - 4), min(h, height - 4)
    return int(rng.integers(2, width - w - 1)), int(rng.integers(2, height - h - 1)), w, h


def _texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) brightness factor of a surface pattern."""
    if kind == "plain":
        return np.ones_like(yy)
    if kind == "striped":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 10)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        return np.where(np.floor(phase) % 2 == 0, 1.0, 0.55).astype(np.float32)
    period = rng.uniform(7, 10)  # dotted: dark dots on a square lattice
    dy, dx = (yy % period) - period / 2, (xx % period) - period / 2
    return np.where(dx**2 + dy**2 <= (period / 3.5) ** 2, 0.5, 1.0).astype(np.float32)


def _background(kind: str, size: tuple[int, int], rng: np.random.Generator, yy, xx) -> np.ndarray:
    """(H, W, 3) float background: `grey` (pretraining's) or a pattern never seen in pretraining."""
    height, width = size
    if kind == "grey":
        base = np.array(_GREY, dtype=np.float32) + rng.uniform(-30, 30) + rng.uniform(-_TINT, _TINT, size=3)
        cell = 8
        coarse = rng.normal(0.0, 10.0, size=(-(-height // cell), -(-width // cell), 1)).astype(np.float32)
        return base + np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]
    # Two grey levels, tinted as pretraining's grey is: the pattern is new, its colours are not. Any RGB
    # here made, say, a green checker: a field of green squares, labelled background.
    a, b = ((rng.uniform(60, 190) + rng.uniform(-_TINT, _TINT, size=3)).astype(np.float32) for _ in range(2))
    period = rng.uniform(14, 30)
    if kind == "checker":
        pick = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 0
    else:  # "waves": soft diagonal bands
        pick = np.sin((xx + yy) / period * np.pi) > 0
    return np.where(pick[..., None], a, b)


def draw_things(
    size: tuple[int, int], things: list[Thing], rng: np.random.Generator, background: str = "grey", condition: str = "clean"
) -> Scene:
    """Render things (in order, later ones occluding earlier ones) on a background, then a condition.

    Arguments:
        size: (H, W).
        things: objects to draw.
        rng: random generator (textures, noise).
        background: grey, checker or waves.
        condition: clean, or one of CONDITIONS.

    Returns:
        The Scene; a thing left with fewer than _MIN_VISIBLE pixels outside the void rings is
        dropped from it and its pixels are void.
    """
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    image = _background(background, size, rng, yy, xx)
    owner = np.zeros(size, dtype=np.int32)
    for index, thing in enumerate(things, start=1):
        mask = shape_mask(thing.shape, *thing.box, yy, xx)
        pattern = _texture(thing.texture, rng, yy, xx)[mask]
        colour = np.array(COLOURS[thing.colour], dtype=np.float32) * rng.uniform(0.9, 1.1)
        image[mask] = colour * pattern[:, None] + rng.normal(0.0, 6.0, size=(int(mask.sum()), 3))
        owner[mask] = index
    image = image + rng.normal(0.0, 5.0, size=image.shape)
    image = _apply_condition(image, condition, rng)

    ring = np.zeros(size, dtype=bool)
    for index in range(1, len(things) + 1):
        mask = owner == index
        ring |= dilate(mask) & ~mask  # boundaries are uncertain, as real datasets mark them
    instances = np.where(ring, -1, 0).astype(np.int32)
    kept: list[Thing] = []
    for index, thing in enumerate(things, start=1):
        mask = (owner == index) & ~ring
        if mask.sum() < _MIN_VISIBLE:  # a sliver: neither the thing nor background, so void
            instances[owner == index] = -1
            continue
        kept.append(thing)
        instances[mask] = len(kept)
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), instances, kept)


def _apply_condition(image: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    if condition == "clean":
        return image
    if condition == "fog":
        haze = rng.uniform(0.45, 0.6)
        return image * (1 - haze) + 205.0 * haze
    if condition == "night":
        return image * rng.uniform(0.25, 0.35) + rng.normal(0.0, 6.0, size=image.shape)
    if condition == "noise":
        return image + rng.normal(0.0, 32.0, size=image.shape)
    raise ValueError(f"unknown condition {condition!r}; choose clean or one of {', '.join(CONDITIONS)}")


def pretraining_scene(rng: np.random.Generator, size: tuple[int, int] = (256, 256)) -> Scene:
    """A clean scene: 1 to 6 things of any colour, shape and texture, on grey; things 8-38 % of the shorter side."""
    count = int(rng.integers(1, 7))
    short = min(size)
    sides = (int(0.08 * short), int(0.38 * short))
    things = [
        Thing(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), str(rng.choice(TEXTURES)), _random_box(rng, size, sides))
        for _ in range(count)
    ]
    return draw_things(size, things, rng)


def task_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """A downstream scene: 1 to 4 task things, 1 to 3 clutter things, a shifted background or condition."""
    things = [Thing(*_TASK_PAIRS[int(rng.integers(len(_TASK_PAIRS)))], str(rng.choice(TEXTURES)), _random_box(rng, size, (24, 80)))
              for _ in range(int(rng.integers(1, 5)))]
    things += [Thing(*_CLUTTER_PAIRS[int(rng.integers(len(_CLUTTER_PAIRS)))], str(rng.choice(TEXTURES)), _random_box(rng, size, (16, 48)))
               for _ in range(int(rng.integers(1, 4)))]
    order = rng.permutation(len(things))
    background = str(rng.choice(["grey", "checker", "waves"]))
    condition = str(rng.choice(CONDITIONS)) if background == "grey" or rng.random() < 0.5 else "clean"
    return draw_things(size, [things[i] for i in order], rng, background=background, condition=condition)


def caption(thing: Thing) -> str:
    """The words for a thing: colour and shape, with its texture unless plain."""
    return thing.name if thing.texture == "plain" else f"{thing.texture} {thing.name}"


def make_world(root: str | Path, n_train: int = 48, n_val: int = 32, size: tuple[int, int] = (192, 256), seed: int = 0,
               void: int = 255) -> Path:
    """Write the downstream task in the split layout understood by ``open_folder``.

    Layout: ``root/classes.txt`` (the four task pairs marked ``[thing]``) and
    ``root/{train,val}/{images,labels,instances}/NNNN.png``;
    labels hold a class index per pixel (``void`` on object borders), instances an instance
    id per pixel (0 background and clutter, 255 void). Files are generated in
    ``root.tmp-<pid>`` and renamed into place; an existing world of the same settings is returned
    untouched (one written before classes.txt marked things gets the markers: its files are the same).

    Raises:
        FileExistsError: ``root`` exists, is not empty and is not this world, or is one of other settings.
    """
    root = Path(root)
    classes = "".join(f"{name} {THING_MARKER}\n" if name in TASK_THINGS else f"{name}\n" for name in TASK_CLASSES)
    settings = {"generator": "world", "n_train": n_train, "n_val": n_val, "size": list(size), "seed": seed, "void": void}
    found = (root / "classes.txt").read_text(encoding="utf-8") if (root / "classes.txt").is_file() else None
    if found == classes:
        check_generated(root, settings)
        return root
    if found == "".join(f"{name}\n" for name in TASK_CLASSES):  # a world written before the [thing] markers
        check_generated(root, settings)
        write_text_atomic(root / "classes.txt", classes)
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not a generated world (no classes.txt listing {', '.join(TASK_CLASSES)})")

    def write_splits(folder: Path) -> None:
        for index, (split, count) in enumerate((("train", n_train), ("val", n_val))):
            rng = np.random.default_rng([seed, 1000 + index])
            for kind in ("images", "labels", "instances"):
                (folder / split / kind).mkdir(parents=True)
            for i in range(count):
                scene = task_scene(rng, size)
                label, instances = _task_labels(scene, void)
                Image.fromarray(scene.image).save(folder / split / "images" / f"{i:04d}.png")
                Image.fromarray(label).save(folder / split / "labels" / f"{i:04d}.png")
                Image.fromarray(instances).save(folder / split / "instances" / f"{i:04d}.png")

    return write_generated(root, classes, settings, write_splits)


def _task_labels(scene: Scene, void: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 class labels and task-instance ids of a task scene; clutter is background."""
    label = np.zeros(scene.instances.shape, dtype=np.uint8)
    instances = np.zeros(scene.instances.shape, dtype=np.uint8)
    task_id = 0
    for index, thing in enumerate(scene.things, start=1):
        if thing.name in TASK_CLASSES:
            task_id += 1
            label[scene.instances == index] = TASK_CLASSES.index(thing.name)
            instances[scene.instances == index] = task_id
    label[scene.instances < 0] = void
    instances[scene.instances < 0] = 255
    return label, instances
