"""Reading images as 8-bit RGB, whatever the file holds (numpy + Pillow).

Every image and label the project reads is opened through `open_image`, the one place that
turns whatever a decoder raises on a bad file into an `ImageError` naming the file.

Shapes: H x W an image.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SSPromptError

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "brief", "error_reason", "open_image", "read_image", "decode_image",
           "find_images"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageError(SSPromptError, ValueError):
    """An image that cannot be read; the message is one line naming the file."""


def error_reason(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    if isinstance(err, UnidentifiedImageError):
        return "cannot identify image file"
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, Image.DecompressionBombError):
        return f"more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels, refused as a decompression bomb"
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def brief(value) -> str:
    """A value as it may appear in a one-line message: its repr on one line, cut at 60 characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


@contextmanager
def open_image(path: str | Path | BinaryIO, what: str = "image", load: bool = True,
               name: str | None = None) -> Iterator[Image.Image]:
    """`PIL.Image.open(path)`, its pixels loaded unless `load` is False (the header alone then);
    a file that cannot be decoded raises an ImageError naming it (`name`, else `path`).

    Pillow refuses images of more than twice `Image.MAX_IMAGE_PIXELS` (about 179 million
    pixels) as decompression bombs; that refusal is an ImageError too.
    """
    im = None
    try:
        im = Image.open(path)
        if load:
            im.load()
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, struct.error, ...
        if im is not None:
            im.close()
        raise ImageError(f"{name or path}: cannot read {what} ({error_reason(err)})") from err
    try:
        yield im
    finally:
        im.close()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as 8-bit RGB, EXIF orientation applied.

    Grayscale and palette images are expanded, alpha is dropped and 16-bit images are
    scaled to 0..255 by their bit depth.

    Returns:
      (np.ndarray): (H, W, 3) uint8 RGB, H and W after EXIF rotation.

    Raises:
      ImageError: the file cannot be read or decoded.
    """
    path = Path(path)
    return _upright_rgb(path, str(path))


def decode_image(data: bytes, name: str) -> np.ndarray:
    """`read_image` of a file's bytes (an upload): the same array, the same errors, naming `name`."""
    return _upright_rgb(io.BytesIO(data), name)


def _upright_rgb(source: Path | BinaryIO, name: str) -> np.ndarray:
    with open_image(source, name=name) as im:
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception as err:  # noqa: BLE001 - a corrupt EXIF block fails in many ways
            raise ImageError(f"{name}: cannot read image (bad EXIF orientation: {error_reason(err)})") from err
        return _to_rgb(upright, name)


def _to_rgb(im: Image.Image, path: str) -> np.ndarray:
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


def find_images(paths: list[str | Path], exclude: list[str | Path] = ()) -> list[Path]:
    """Image files named directly or found (recursively, sorted, hidden ones left out) in the given folders,
    in the order given; a file named twice is listed twice. Folders are listed by `files.regular_files`
    (regular files only; nothing inside an `exclude` folder, where a command writes its outputs).

    Raises:
      ImageError: a path that does not exist or is not a regular file (a FIFO would block), or a folder
        holding no image.
    """
    from .files import is_regular_file, regular_files

    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            inside = regular_files(entry, IMAGE_EXTENSIONS, recursive=True, exclude=exclude)
            if not inside:
                raise ImageError(f"{entry}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found.extend(inside)
        elif is_regular_file(entry):
            found.append(entry)
        elif entry.exists():
            raise ImageError(f"{entry}: not a regular file (a FIFO, socket or device); name image files or folders")
        else:
            raise ImageError(f"{entry}: no such file or folder")
    return found
