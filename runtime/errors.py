"""The project's own errors: one base that every command line reports as one line (no torch, no onnx here).

Each stage raises a subclass of SSPromptError for a problem of the user's input or environment (a damaged
pack, an unreadable image, a model built for another GPU, an option value the parser could not judge); the
message is one line naming the file or the option. Every command line catches SSPromptError once, and
OSError (which the operating system raises for a missing file or a full disk, naming the file), and prints
that line with exit status 1. Anything else is a bug and keeps its traceback.

Subclasses keep a builtin base where callers catch it (a damaged pack is also a ValueError); the
classes of one stage live in the module that raises them:

    SSPromptError
    ├── OptionError (ValueError)         here: an option's value that only the run behind it can judge
    ├── ModelError (RuntimeError)        here: a model or engine that cannot be used here
    ├── MetadataError, ContractError     runtime/contract.py
    ├── ImageError                       runtime/images.py
    ├── WriteError (OSError)             runtime/files.py; LockedError under it
    ├── RequestError                     runtime/serve.py
    ├── ExportError (RuntimeError)       export/pipeline.py
    └── PackError, DataError, BackboneError   train/pack.py, train/data.py, train/backbones.py
"""

from __future__ import annotations

__all__ = ["SSPromptError", "OptionError", "ModelError", "one_line"]


class SSPromptError(Exception):
    """A user's input or environment problem; the message is one line naming the file (or the option)."""


class OptionError(SSPromptError, ValueError):
    """An option's value refused by the run behind the parser (a device that is absent, a --batch outside an
    engine's profile); the message names the option."""


class ModelError(SSPromptError, RuntimeError):
    """A model or engine that cannot be used here; one line naming the file and what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (a message quoting a tool's output may hold line breaks)."""
    return " ".join(str(err).split())
