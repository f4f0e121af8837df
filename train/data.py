"""Labelled segmentation folders: discovery, validated reading, k-shot sampling.

Three layouts are understood (see :func:`open_folder`): a flat folder with
``classes.txt`` + ``images/`` + ``labels/``, the same split into ``<split>/``
sub-folders, and Cityscapes as distributed (``leftImg8bit/`` + ``gtFine/``).
Labels are single-channel images whose pixel value is the class index; one
value (``void``) marks pixels ignored in losses and metrics. A class line of
``classes.txt`` ending in ``[thing]`` marks a countable class (instances; the
others are stuff), and an optional ``instances/`` folder beside ``labels/``
holds instance-id maps (0: no instance), as Cityscapes' ``*_gtFine_instanceIds.png``.

Only numpy, Pillow and tqdm are needed here, so the module imports without torch.

Shapes: H x W an image, N samples, C classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssprompt.runtime import images as runtime_images
from ssprompt.runtime.errors import SSPromptError
from ssprompt.runtime.files import regular_files
from ssprompt.runtime.images import IMAGE_EXTENSIONS, error_reason
from ssprompt.runtime.postprocess import resize_label

__all__ = [
    "error_reason",
    "CITYSCAPES_CLASSES",
    "IMAGE_EXTENSIONS",
    "DataError",
    "Sample",
    "SegmentationFolder",
    "class_presence",
    "open_folder",
    "read_image",
    "read_label",
    "read_instances",
    "THING_MARKER",
    "resize_label",
    "sample_k_shot",
    "short_side_size",
]

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
_CITYSCAPES_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"  # labelId * 1000 + k on thing instances, labelId elsewhere
_CITYSCAPES_THINGS = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
THING_MARKER = "[thing]"  # ends a classes.txt line of a countable class (any case, spaces inside the brackets allowed)
_MARKER = re.compile(r"(.*?)\s*\[([^\[\]]*)\]")  # a line ending in a bracketed marker
MAX_LABEL = 65535  # labels are 8- or 16-bit: up to 65535 classes and void values
_EXIF_ORIENTATION = 0x0112
_LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I")


class DataError(SSPromptError, ValueError):
    """Bad input data.

    ``str(err)`` is one line naming the offending file or folder and what is wrong.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True)
class Sample:
    """One image and its label file."""

    image: Path
    label: Path
    instances: Path | None = None  # instance-id map, where the dataset has one


@dataclass
class SegmentationFolder:
    """A validated list of samples and the class names they are labelled with.

    ``split`` is the split that was opened (None for a flat folder) and
    ``location`` the folder the samples come from, for messages; it defaults to
    ``root``.
    """

    root: Path
    class_names: list[str]
    void: int
    samples: list[Sample]
    split: str | None = None
    location: Path | None = field(default=None)
    thing_classes: list[int] = field(default_factory=list)  # indices of countable classes

    def __post_init__(self) -> None:
        if self.location is None:
            self.location = self.root

    @property
    def num_classes(self) -> int:
        """Number of classes C (label values 0..C-1 are classes)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------- discovery


def open_folder(root: str | Path, split: str | None = None, void: int = 255) -> SegmentationFolder:
    """Find the samples of a labelled segmentation folder and check its structure.

    Layouts, tried in this order:

    1. ``root/classes.txt`` with ``root/images`` and ``root/labels``;
    2. ``root/classes.txt`` with ``root/<split>/images`` and ``root/<split>/labels``;
    3. Cityscapes: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
       ``root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (split defaults
       to "train"; void is always 255).

    Label contents (values, sizes) are checked later, by :func:`read_label`.

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

    class_names, thing_classes = _read_classes(classes_file)
    _check_void(void, class_names, classes_file)

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
        instances = labels_root / image.parent.name / (stem + _CITYSCAPES_INSTANCE_SUFFIX)
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


def _read_classes(path: Path) -> tuple[list[str], list[int]]:
    """Class names in index order, and the indices of the lines marked [thing]."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first name
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read classes ({error_reason(err)})") from err
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: classes.txt is empty (expected one class name a line)")
    names, things = [], []
    for line in lines:
        marked = _MARKER.fullmatch(line)
        if marked:
            line, tag = marked.group(1).strip(), marked.group(2).strip()
            if tag.casefold() != THING_MARKER[1:-1]:
                raise DataError(f"{path}: class {line!r} ends in the marker [{tag}]; the one marker is {THING_MARKER} "
                                "(countable classes)")
            if not line:
                raise DataError(f"{path}: a {THING_MARKER} line without a class name")
            things.append(len(names))
        names.append(line)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: duplicate class name {name!r}")
        seen.add(name)
    return names, things


def _check_void(void: int, class_names: list[str], classes_file: Path) -> None:
    if not 0 <= void <= MAX_LABEL:
        raise DataError(f"{classes_file}: void {void} is outside [0, {MAX_LABEL}]")
    if void < len(class_names):
        raise DataError(
            f"{classes_file}: void {void} collides with class {void} ({class_names[void]!r}) "
            f"of {len(class_names)} classes; void must be >= {len(class_names)}"
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


# --------------------------------------------------------------------------- reading


def read_image(path: Path) -> np.ndarray:
    """`ssprompt.runtime.images.read_image`, raising DataError: (H, W, 3) uint8 RGB, EXIF applied."""
    try:
        return runtime_images.read_image(path)
    except runtime_images.ImageError as err:
        raise DataError(str(err)) from err


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, from the header only."""
    try:
        with runtime_images.open_image(path, load=False) as im:
            width, height = im.size
            # PngImageFile.getexif() decodes the whole image when the EXIF chunk is
            # not in the header; such files are treated as unrotated.
            exif_in_header = "exif" in im.info or "Raw profile type exif" in im.info
            if im.format == "PNG" and not exif_in_header:
                return width, height
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except runtime_images.ImageError as err:
        raise DataError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - a corrupt EXIF block fails in many ways
        raise DataError(f"{path}: cannot read image (bad EXIF block: {error_reason(err)})") from err
    if orientation in (5, 6, 7, 8):
        return height, width
    return width, height


def read_label(sample: Sample, num_classes: int, void: int) -> np.ndarray:
    """Read and validate the label of a sample.

    Accepted modes: "L", "P" (raw palette indices, not colours), "I;16" and "I".
    The label must have the size of the (EXIF-rotated) image, read from the
    image header only.

    Arguments:
        sample: image and label paths.
        num_classes: number of classes C.
        void: the ignored label value.

    Returns:
        (H, W) array of class indices in [0, C) or ``void``: uint8, or uint16 where C or void pass 255.

    Raises:
        DataError: unreadable label, multi-channel label, size mismatch or
            values outside [0, C) other than void.
    """
    path = sample.label
    try:
        with runtime_images.open_image(path, "label") as im:
            mode = im.mode
            label_size = im.size
            # np.asarray of a "P" image yields the palette indices themselves.
            values = np.asarray(im) if mode in _LABEL_MODES else None
    except runtime_images.ImageError as err:
        raise DataError(str(err)) from err
    if values is None:
        if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
            raise DataError(
                f"{path}: label is {mode} (multi-channel); expected a single-channel PNG "
                "whose pixel values are class indices (mode L or P)"
            )
        raise DataError(f"{path}: unsupported label mode {mode} (expected L, P, I;16 or I)")

    image_size = _image_size(sample.image)
    if label_size != image_size:
        raise DataError(
            f"{path}: label size {label_size[0]}x{label_size[1]} differs from image size "
            f"{image_size[0]}x{image_size[1]} ({sample.image.name})"
        )

    if values.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    else:
        present = np.unique(values)
    bad = present[((present >= num_classes) & (present != void)) | (present < 0)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        more = f" (+{bad.size - 5} more)" if bad.size > 5 else ""
        raise DataError(
            f"{path}: label values {shown}{more} are outside [0, {num_classes}) "
            f"and are not void {void}"
        )
    dtype = np.uint8 if max(num_classes - 1, void) <= 255 else np.uint16
    return values.astype(dtype, copy=values.dtype != dtype)


def read_instances(sample: Sample) -> np.ndarray | None:
    """The sample's instance-id map, (H, W) int32 with 0 where no instance is, or None where it has none.

    A Cityscapes ``*_gtFine_instanceIds.png`` keeps only its instance ids (labelId * 1000 + k);
    its smaller values are class ids of pixels outside any instance, read as 0.

    Raises:
        DataError: unreadable or multi-channel map, or a size other than the image's.
    """
    path = sample.instances
    if path is None:
        return None
    try:
        with runtime_images.open_image(path, "instance map") as im:
            mode, size = im.mode, im.size
            values = np.asarray(im) if mode in _LABEL_MODES else None
    except runtime_images.ImageError as err:
        raise DataError(str(err)) from err
    if values is None:
        raise DataError(f"{path}: instance map is {mode}; expected a single-channel PNG of instance ids (L, I;16 or I)")
    image_size = _image_size(sample.image)
    if size != image_size:
        raise DataError(f"{path}: instance map size {size[0]}x{size[1]} differs from image size "
                        f"{image_size[0]}x{image_size[1]} ({sample.image.name})")
    values = values.astype(np.int32)
    if path.name.endswith(_CITYSCAPES_INSTANCE_SUFFIX):
        values[values < 1000] = 0
    return values


def class_presence(folder: SegmentationFolder, progress: bool = True) -> np.ndarray:
    """Which classes each sample's label contains; validates every label once.

    Arguments:
        folder: an opened folder with N samples and C classes.
        progress: show a tqdm bar ("scan labels").

    Returns:
        (N, C) bool array, True where class c occurs in sample n.
    """
    num_classes = len(folder.class_names)
    presence = np.zeros((len(folder.samples), num_classes), dtype=bool)
    bar = tqdm(folder.samples, desc="scan labels", unit="img", disable=not progress, leave=False)
    for row, sample in enumerate(bar):
        label = read_label(sample, num_classes, folder.void)
        presence[row] = np.bincount(label.ravel(), minlength=256)[:num_classes] > 0
    return presence


# --------------------------------------------------------------------------- sampling


def sample_k_shot(
    folder: SegmentationFolder, k: int, seed: int = 0, presence: np.ndarray | None = None
) -> list[int]:
    """Pick a few-shot subset in which every class occurs in at least k images.

    For each class in index order, images containing it are drawn in a seeded
    random order until k chosen images contain it (images chosen for earlier
    classes count).

    Arguments:
        folder: an opened folder with N samples and C classes.
        k: shots per class, >= 1.
        seed: random seed; the same seed gives the same subset.
        presence: (N, C) bool from :func:`class_presence`; computed when None.

    Returns:
        Sorted sample indices of the subset.

    Raises:
        DataError: k < 1, or a class occurs in fewer than k images.
    """
    if k < 1:
        raise DataError(
            f"{folder.location}: --shots {k} is invalid; need at least 1 image per class"
        )
    if presence is None:
        presence = class_presence(folder)
    presence = np.asarray(presence, dtype=bool)
    expected = (len(folder.samples), len(folder.class_names))
    if presence.shape != expected:
        raise ValueError(f"presence has shape {presence.shape}, expected {expected}")

    counts = presence.sum(axis=0)
    for c, name in enumerate(folder.class_names):
        if counts[c] < k:
            raise DataError(
                f"class {name!r} appears in {int(counts[c])} images of {folder.location}, "
                f"fewer than --shots {k}"
            )

    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(folder.samples), dtype=bool)
    for c in range(len(folder.class_names)):
        missing = k - int(presence[chosen, c].sum())
        if missing <= 0:
            continue
        candidates = rng.permutation(np.flatnonzero(presence[:, c] & ~chosen))
        chosen[candidates[:missing]] = True
    return [int(i) for i in np.flatnonzero(chosen)]


# --------------------------------------------------------------------------- geometry


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """Size with the shorter side scaled to ``short``, aspect ratio kept.

    Arguments:
        height: input height.
        width: input width.
        short: target length of the shorter side.

    Returns:
        (H, W); the longer side is rounded half up and at least 1.
    """
    if height < 1 or width < 1 or short < 1:
        raise ValueError(f"sizes must be positive, got height={height} width={width} short={short}")
    if height <= width:
        return short, max(1, int(width * short / height + 0.5))
    return max(1, int(height * short / width + 0.5)), short
