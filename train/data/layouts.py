"""Finding the samples of a labelled segmentation folder: the three layouts understood.

A flat folder with ``classes.txt`` + ``images/`` + ``labels/``, the same split into ``<split>/``
sub-folders, and Cityscapes as distributed (``leftImg8bit/`` + ``gtFine/``). An optional
``instances/`` folder beside ``labels/`` holds instance-id maps (0: no instance), as Cityscapes'
``*_gtFine_instanceIds.png``.
"""

from __future__ import annotations

from pathlib import Path

from ssprompt.runtime.files import regular_files
from ssprompt.runtime.images import IMAGE_EXTENSIONS

from .classes import check_void, read_classes
from .folder import DataError, Sample, SegmentationFolder

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_INSTANCE_SUFFIX", "open_folder"]

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"
_CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
CITYSCAPES_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"  # labelId * 1000 + k on thing instances, labelId elsewhere
_CITYSCAPES_THINGS = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def open_folder(root: str | Path, split: str | None = None, void: int = 255) -> SegmentationFolder:
    """Find the samples of a labelled segmentation folder and check its structure.

    Layouts, tried in this order:

    1. ``root/classes.txt`` with ``root/images`` and ``root/labels``;
    2. ``root/classes.txt`` with ``root/<split>/images`` and ``root/<split>/labels``;
    3. Cityscapes: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
       ``root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (split defaults
       to "train"; void is always 255).

    Label contents (values, sizes) are checked later, by `reading.read_label`.

    Arguments:
        root: dataset folder.
        split: split sub-folder to open; needed when ``root`` holds splits.
        void: label value ignored in losses and metrics, in [C, 65535].

    Returns:
        The folder, samples sorted by image stem.

    Raises:
        DataError: on a missing or malformed folder, classes.txt or label file.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        if (root / "leftImg8bit").is_dir():
            return _open_cityscapes(root, split)
        raise DataError(
            f"{root}: missing classes.txt (expected {classes_file}, one class name a line)"
        )

    class_names, thing_classes = read_classes(classes_file)
    check_void(void, class_names, classes_file)

    if split is None:
        if not (root / "images").is_dir():
            splits = _split_folders(root)
            if splits:
                raise DataError(f"{root}: has splits {', '.join(splits)}; pick one with --split")
            raise DataError(
                f"{root}: no images folder (expected {root / 'images'} or {root}/<split>/images)"
            )
        location = root
    else:
        location = root / split
        if not (location / "images").is_dir():
            if (root / "images").is_dir():
                raise DataError(
                    f"{root}: has no split {split!r} (images/ and labels/ sit directly in it); "
                    "drop --split"
                )
            splits = _split_folders(root)
            found = f"splits found: {', '.join(splits)}" if splits else "no split folders found"
            raise DataError(f"{location / 'images'}: split folder not found ({found})")

    images_dir, labels_dir = location / "images", location / "labels"
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: labels folder not found (next to {images_dir})")
    images = _list_images(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no images found (extensions {_extensions_text()})")
    # One directory listing instead of a stat per image; case-insensitive ".png".
    labels = {p.stem: p for p in regular_files(labels_dir, {".png"})}
    instances_dir = location / "instances"
    instances = {p.stem: p for p in regular_files(instances_dir, {".png"})} if instances_dir.is_dir() else None
    samples = []
    for image in images:
        label = labels.get(image.stem)
        if label is None:
            raise DataError(_missing(image, labels_dir / f"{image.stem}.png", "label"))
        instance = None
        if instances is not None:
            instance = instances.get(image.stem)
            if instance is None:
                raise DataError(_missing(image, instances_dir / f"{image.stem}.png", "instance map"))
        samples.append(Sample(image=image, label=label, instances=instance))
    return SegmentationFolder(
        root=root,
        class_names=class_names,
        void=void,
        samples=samples,
        split=split,
        location=location,
        thing_classes=thing_classes,
    )


def _open_cityscapes(root: Path, split: str | None) -> SegmentationFolder:
    split = "train" if split is None else split
    images_root = root / "leftImg8bit" / split
    labels_root = root / "gtFine" / split
    if not images_root.is_dir():
        splits = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
        found = f"splits found: {', '.join(splits)}" if splits else "no split folders found"
        raise DataError(f"{images_root}: Cityscapes split folder not found ({found})")
    if not labels_root.is_dir():
        raise DataError(f"{labels_root}: Cityscapes label folder not found (gtFine/{split})")
    images = [
        p
        for city in sorted(images_root.iterdir())
        if city.is_dir()
        for p in regular_files(city, {".png"})
        if p.stem.endswith(_CITYSCAPES_IMAGE_SUFFIX)
    ]
    if not images:
        raise DataError(
            f"{images_root}: no images found (expected <city>/*{_CITYSCAPES_IMAGE_SUFFIX}.png)"
        )
    images.sort(key=lambda p: (p.stem, str(p)))
    samples = []
    for image in images:
        stem = image.stem[: -len(_CITYSCAPES_IMAGE_SUFFIX)]
        label = labels_root / image.parent.name / (stem + _CITYSCAPES_LABEL_SUFFIX)
        if not label.is_file():
            raise DataError(f"{image}: image has no label (expected {label})")
        instances = labels_root / image.parent.name / (stem + CITYSCAPES_INSTANCE_SUFFIX)
        samples.append(Sample(image=image, label=label, instances=instances if instances.is_file() else None))
    return SegmentationFolder(
        root=root,
        class_names=list(CITYSCAPES_CLASSES),
        void=255,
        samples=samples,
        split=split,
        location=images_root,
        thing_classes=[CITYSCAPES_CLASSES.index(name) for name in _CITYSCAPES_THINGS],
    )


def _missing(image: Path, expected: Path, what: str) -> str:
    """The message for an image whose label (or instance map) is absent, or present but no regular file."""
    if expected.exists() or expected.is_symlink():
        return f"{expected}: {what} is not a regular file (a folder, FIFO, socket, device or broken link)"
    return f"{image}: image has no {what} (expected {expected})"


def _split_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())


def _list_images(folder: Path) -> list[Path]:
    images = regular_files(folder, IMAGE_EXTENSIONS)
    images.sort(key=lambda p: (p.stem, p.name))
    for first, second in zip(images, images[1:]):
        if first.stem == second.stem:
            raise DataError(
                f"{second}: two images share the stem {first.stem!r} ({first.name}, {second.name})"
            )
    return images


def _extensions_text() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))
