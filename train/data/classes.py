"""``classes.txt``: class names in index order, the ``[thing]`` marker of countable classes, and the void value.

A class line ending in ``[thing]`` marks a countable class (instances); the others are stuff.
"""

from __future__ import annotations

import re
from pathlib import Path

from ssprompt.runtime.images import error_reason

from .folder import DataError

__all__ = ["MAX_LABEL", "THING_MARKER", "check_void", "read_classes"]

THING_MARKER = "[thing]"  # ends a classes.txt line of a countable class (any case, spaces inside the brackets allowed)
_MARKER = re.compile(r"(.*?)\s*\[([^\[\]]*)\]")  # a line ending in a bracketed marker
MAX_LABEL = 65535  # labels are 8- or 16-bit: up to 65535 classes and void values


def read_classes(path: Path) -> tuple[list[str], list[int]]:
    """Class names in index order, and the indices of the lines marked [thing].

    Raises:
        DataError: unreadable or empty file, an unknown marker, a marker without a name, a duplicate name.
    """
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


def check_void(void: int, class_names: list[str], classes_file: Path) -> None:
    """Raise DataError unless ``void`` is a label value in [C, MAX_LABEL] for the C classes of ``classes_file``."""
    if not 0 <= void <= MAX_LABEL:
        raise DataError(f"{classes_file}: void {void} is outside [0, {MAX_LABEL}]")
    if void < len(class_names):
        raise DataError(
            f"{classes_file}: void {void} collides with class {void} ({class_names[void]!r}) "
            f"of {len(class_names)} classes; void must be >= {len(class_names)}"
        )
