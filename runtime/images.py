"""Reading images as 8-bit RGB, whatever the file holds (numpy + Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "error_reason", "read_image", "find_images"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageError(ValueError):
    """An image that cannot be read; the message is one line naming the file."""


def error_reason(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    if isinstance(err, UnidentifiedImageError):
        return "cannot identify image file"
    if isinstance(err, FileNotFoundError):
        return "file not found"
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as 8-bit RGB, EXIF orientation applied.

    Grayscale and palette images are expanded, alpha is dropped and 16-bit images are
    scaled to 0..255 by their bit depth.

    Returns:
      (np.ndarray): HxWx3 uint8 RGB, H and W after EXIF rotation.

    Raises:
      ImageError: the file cannot be read or decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im, path)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises SyntaxError for some bad headers
        raise ImageError(f"{path}: cannot read image ({error_reason(err)})") from err


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im).astype(np.int64)
        np.clip(values, 0, None, out=values)
        # I;16 is 16-bit by definition; "I" holds 16-bit data unless larger values say otherwise.
        bits = max(16, int(values.max(initial=0)).bit_length())
        gray = np.rint(values * (255.0 / float(2**bits - 1))).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # through RGBA so a palette transparency entry does not trip Pillow's warning
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except ValueError as err:
        raise ImageError(f"{path}: cannot read image (unsupported mode {im.mode})") from err


def find_images(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders.

    Raises:
      ImageError: a path that does not exist, or a folder holding no image.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            inside = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not inside:
                raise ImageError(f"{entry}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found.extend(inside)
        elif entry.is_file():
            found.append(entry)
        else:
            raise ImageError(f"{entry}: no such file or folder")
    return found
