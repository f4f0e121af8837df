"""Validated reading of a sample's image, label and instance map; every failure a one-line DataError.

Shapes: H x W an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssprompt.runtime import images as runtime_images
from ssprompt.runtime.images import error_reason

from .folder import DataError, Sample
from .layouts import CITYSCAPES_INSTANCE_SUFFIX

__all__ = ["read_image", "read_instances", "read_label"]

_EXIF_ORIENTATION = 0x0112
_LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I")


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
    if path.name.endswith(CITYSCAPES_INSTANCE_SUFFIX):
        values[values < 1000] = 0
    return values
