"""A generated dataset's folder: written whole (in a temporary folder, then renamed), and reused only when it
was made with the same settings (its ``dataset.json``).

Shared by the plain synthetic dataset (train/synthetic.py) and the miniature world (train/world.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ssprompt.runtime.files import regular_files

__all__ = ["GENERATED_SETTINGS", "check_generated", "write_generated"]

GENERATED_SETTINGS = "dataset.json"  # what a generated dataset was made with


def check_generated(root: Path, settings: dict) -> None:
    """An existing generated dataset is reused only if it was made with `settings` (its dataset.json; one
    written before that file existed is judged by its image counts); otherwise FileExistsError."""
    recorded = root / GENERATED_SETTINGS
    try:
        found = json.loads(recorded.read_text(encoding="utf-8"))
    except FileNotFoundError:
        found = {key: len(regular_files(root / split / "images", {".png"})) if (root / split / "images").is_dir() else 0
                 for key, split in (("n_train", "train"), ("n_val", "val"))}
    except (OSError, ValueError):
        found = {}
    differ = [f"{key} {found.get(key)} (asked {value})" for key, value in settings.items()
              if key in found and found[key] != value]
    if differ or not found:
        what = ", ".join(differ) or f"unreadable {GENERATED_SETTINGS}"
        raise FileExistsError(f"{root}: holds a generated dataset of other settings ({what}); remove it or choose "
                              "another folder")


def write_generated(root: Path, classes: str, settings: dict, write_splits: Callable[[Path], None]) -> Path:
    """Write a generated dataset to `root` (absent or an empty folder): classes.txt, dataset.json, and what
    `write_splits(folder)` writes into the folder, all in ``root.tmp-<pid>`` renamed into place at the end.

    Arguments:
        root: the dataset's folder.
        classes: classes.txt's text.
        settings: what the dataset is made with (dataset.json).
        write_splits: writes the split folders into the folder it is given.

    Returns:
        ``root``. Where another process renamed the same dataset into place first, that one.

    Raises:
        FileExistsError: another process wrote a dataset of other settings to `root` in the meantime.
    """
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        (tmp / "classes.txt").write_text(classes, encoding="utf-8")
        (tmp / GENERATED_SETTINGS).write_text(json.dumps(settings) + "\n", encoding="utf-8")
        write_splits(tmp)
        if root.is_dir():
            root.rmdir()  # empty, checked by the caller; rename cannot replace it everywhere
        try:
            tmp.rename(root)
        except OSError:
            # Another process may have written the same dataset in the meantime.
            found = root / "classes.txt"
            if not found.is_file() or found.read_text(encoding="utf-8") != classes:
                raise
            check_generated(root, settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
