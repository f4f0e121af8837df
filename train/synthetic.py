"""A small generated segmentation dataset for demos and tests (no downloads).

Images show coloured shapes on a textured grey background. Every class has
its own shape and a saturated colour, so even an untrained network can tell
them apart by colour; labels carry a 1-pixel void ring around each shape, as
real datasets mark uncertain boundaries.

Shapes: H x W an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .generated import check_generated, write_generated
from .shapes import dilate, shape_mask

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic"]

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "red disc", "green square", "blue triangle")  # disc/square: ellipses and rectangles

# Per foreground class: shape and mean RGB colour.
_SHAPES = {1: "disc", 2: "square", 3: "triangle"}
_COLOURS = {1: (215, 40, 35), 2: (35, 185, 55), 3: (40, 70, 220)}
_BACKGROUND = (122, 120, 114)
_MIN_PRESENCE = 0.6
_MIN_SIDE = 24


def make_synthetic(
    root: str | Path,
    n_train: int = 32,
    n_val: int = 16,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    void: int = 255,
) -> Path:
    """Write the synthetic dataset in the split layout understood by ``open_folder``.

    Layout: ``root/classes.txt`` and ``root/{train,val}/{images,labels}/NNNN.png``
    (labels are mode "L": class index per pixel, ``void`` on shape borders).
    Every foreground class occurs in at least 60% of the images of each split.
    The files are generated in ``root.tmp-<pid>`` and renamed into place.

    Arguments:
        root: folder to create.
        n_train: number of training images, >= 1.
        n_val: number of validation images, >= 1.
        size: image (H, W), each at least 24.
        seed: random seed; the same seed gives identical files.
        void: label value of the shape borders, in [len(SYNTHETIC_CLASSES), 255].

    Returns:
        ``root`` as a Path. An existing synthetic dataset of the same settings
        (``root/dataset.json``) is returned untouched.

    Raises:
        FileExistsError: ``root`` exists, is not empty and is not a synthetic dataset,
            or is one of other settings.
        ValueError: bad counts, size or void.
    """
    root = Path(root)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    height, width = size
    if height < _MIN_SIDE or width < _MIN_SIDE:
        raise ValueError(f"size must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {size}")
    if not len(SYNTHETIC_CLASSES) <= void <= 255:
        raise ValueError(f"void must be in [{len(SYNTHETIC_CLASSES)}, 255], got {void}")

    settings = {"generator": "synthetic", "n_train": n_train, "n_val": n_val, "size": [height, width], "seed": seed,
                "void": void}
    if _is_synthetic(root):
        check_generated(root, settings)
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root}: exists and is not a synthetic dataset (no classes.txt listing "
            f"{', '.join(SYNTHETIC_CLASSES)}); remove it or choose another folder"
        )

    def write_splits(folder: Path) -> None:
        for index, (split, count) in enumerate((("train", n_train), ("val", n_val))):
            rng = np.random.default_rng([seed, index])
            _write_split(folder / split, count, (height, width), rng, void)

    return write_generated(root, "\n".join(SYNTHETIC_CLASSES) + "\n", settings, write_splits)


def _is_synthetic(root: Path) -> bool:
    classes = root / "classes.txt"
    if not classes.is_file():
        return False
    lines = classes.read_text(encoding="utf-8").splitlines()
    names = [line.strip() for line in lines if line.strip()]
    return tuple(names) == SYNTHETIC_CLASSES


def _write_split(
    folder: Path, count: int, size: tuple[int, int], rng: np.random.Generator, void: int
) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    for i, classes in enumerate(_plan_classes(count, rng)):
        image, label = _render(classes, size, rng, void)
        Image.fromarray(image).save(folder / "images" / f"{i:04d}.png")
        Image.fromarray(label).save(folder / "labels" / f"{i:04d}.png")


def _plan_classes(count: int, rng: np.random.Generator) -> list[list[int]]:
    """Foreground classes of each image: every class absent from at most 40% of them.

    Arguments:
        count: number of images.
        rng: random generator.

    Returns:
        ``count`` lists of 1 to 3 distinct foreground classes, in drawing order.
    """
    foreground = sorted(_SHAPES)
    budget = int(count * (1.0 - _MIN_PRESENCE))
    drops: list[set[int]] = [set() for _ in range(count)]
    tokens = rng.permutation(np.repeat(foreground, budget))
    for c in tokens:
        # Each image keeps at least one shape. A valid image always exists: fewer than
        # 0.4*count images already drop c and at most 0.6*count hold two drops.
        open_images = [
            i for i in range(count) if c not in drops[i] and len(drops[i]) < len(foreground) - 1
        ]
        drops[int(rng.choice(open_images))].add(int(c))
    plan = []
    for dropped in drops:
        kept = [c for c in foreground if c not in dropped]
        plan.append([int(c) for c in rng.permutation(kept)])
    return plan


def _render(
    classes: list[int], size: tuple[int, int], rng: np.random.Generator, void: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its label.

    Arguments:
        classes: foreground classes to draw (1 to 3).
        size: (H, W).
        rng: random generator.
        void: label value of the shape borders.

    Returns:
        (H, W, 3) uint8 image and (H, W) uint8 label.
    """
    height, width = size
    # Textured background: a coarse random field (upsampled) plus fine per-pixel noise.
    # Brightness varies more than tint, so the background stays grey-ish.
    jitter = rng.uniform(-20, 20) + rng.uniform(-6, 6, size=3)
    base = np.array(_BACKGROUND, dtype=np.float32) + jitter.astype(np.float32)
    cell = 8
    coarse_shape = (-(-height // cell), -(-width // cell), 1)  # ceil division
    coarse = rng.normal(0.0, 10.0, size=coarse_shape).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]
    image = base + texture + rng.normal(0.0, 6.0, size=(height, width, 3)).astype(np.float32)
    label = np.zeros((height, width), dtype=np.uint8)

    # One shape per vertical band, so shapes (and their void rings) never overlap
    # and every planned class is visible in the label.
    bands = 3
    band_w = width // bands
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    for c, band in zip(classes, rng.permutation(bands)):
        # Large shapes (most of their band): each covers a tenth to a quarter of the image,
        # so objects, not background, dominate the pixels a prompt's mask can pool.
        box_w = int(rng.integers(int((band_w - 4) * 0.7), band_w - 3))
        box_h = int(rng.integers(int((height - 4) * 0.5), height - 3))
        x0 = band * band_w + 2 + int(rng.integers(0, band_w - box_w - 3))
        y0 = 2 + int(rng.integers(0, height - box_h - 3))
        mask = shape_mask(_SHAPES[c], x0, y0, box_w, box_h, yy, xx)
        ring = dilate(mask) & ~mask
        label[mask] = c
        label[ring] = void
        colour = np.array(_COLOURS[c], dtype=np.float32)
        image[mask] = colour + rng.normal(0.0, 8.0, size=(int(mask.sum()), 3)).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label
