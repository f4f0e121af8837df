"""What an opened labelled folder is: its samples, class names and void value, and DataError."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ssprompt.runtime.errors import SSPromptError

__all__ = ["DataError", "Sample", "SegmentationFolder"]


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
