"""Click option types and the error report shared by every command line (ssp-run, ssp-bench, ssp-serve,
ssp-train, ssp-eval, ssp-synth, ssp-demo, ssp-pretrain, ssp-export): a bad value is refused while the
options are parsed, before anything runs, with click's one line and exit status 2; an error of the run
behind them (`reported_errors`) is one line and exit status 1. No torch, no onnx here.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click

from .errors import SSPromptError, one_line

__all__ = ["POSITIVE", "NON_NEGATIVE", "SEED", "LABEL_VALUE", "UNIT", "FiniteFloat", "PositiveFinite", "IntList",
           "Parsed", "OutputFile", "writable_parent", "reported_errors"]

POSITIVE = click.IntRange(min=1)  # counts: batch sizes, steps, shots, threads, MiB
NON_NEGATIVE = click.IntRange(min=0)  # warm-up calls, sizes where 0 means "keep"
SEED = click.IntRange(min=0, max=2**63 - 1)  # numpy's generators refuse negative seeds
LABEL_VALUE = click.IntRange(min=0, max=65535)  # a label pixel value (8- or 16-bit label PNGs)


class FiniteFloat(click.FloatRange):
    """A float that is a number (not nan, not inf), optionally within click.FloatRange's bounds."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


UNIT = FiniteFloat(min=0.0, max=1.0)  # probabilities, IoUs, shares


class PositiveFinite(FiniteFloat):
    """A finite float above 0 (learning rates)."""

    def __init__(self) -> None:
        super().__init__(min=0.0, min_open=True)


class IntList(click.ParamType):
    """Comma-separated integers within an IntRange, at least one: '1,2,4' -> [1, 2, 4]."""

    name = "integers"

    def __init__(self, each: click.IntRange = POSITIVE) -> None:
        self.each = each

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = str(value).split(",")
        if not all(part.strip() for part in parts):
            self.fail(f"{value!r}: expected integers separated by single commas, e.g. 1,2,4.", param, ctx)
        return [self.each.convert(part.strip(), param, ctx) for part in parts]


class Parsed(click.ParamType):
    """A value read by `parse(text)`, whose ValueError becomes click's refusal (exit 2)."""

    def __init__(self, parse: Callable[[str], object], name: str) -> None:
        self.parse = parse
        self.name = name

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def writable_parent(path: str | Path, folder: bool = False) -> str | None:
    """Why a file (or with `folder`, a folder) cannot be written at `path`, or None where it can.

    The nearest existing ancestor must be a folder this process may write into (missing folders
    on the way are made); a file on the way, or `path` itself of the other kind, is named.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        return f"{path} is {'not a folder' if folder else 'a folder'}"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            return f"{ancestor} is a broken link"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable"
    return None


class OutputFile(click.Path):
    """A file (or with `folder`, a folder) to write: checked before the command runs, so that a long
    job never fails at its last write."""

    def __init__(self, folder: bool = False) -> None:
        super().__init__(dir_okay=folder, file_okay=not folder)
        self.folder = folder

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        problem = writable_parent(value, self.folder)
        if problem:
            self.fail(f"cannot write {value}: {problem}.", param, ctx)
        return value


@contextmanager
def reported_errors() -> Iterator[None]:
    """The project's errors (SSPromptError) as click's one line and exit status 1; anything else keeps its traceback.

    OSError beside them: the operating system raises it (a missing file, a full disk, a refused permission) with
    the file in its message, and no project base can be given to it.
    """
    try:
        yield
    except (SSPromptError, OSError) as err:
        raise click.ClickException(one_line(err)) from None
