"""Atomic writes of files and folders: readers never see half of either, a failure leaves nothing behind.

Temporaries are hidden, named `.ssprompt-tmp-<pid>-<name>...` beside their final path, and get the
umask's modes when they are renamed into place. SIGTERM is handled like Ctrl-C
(`terminate_like_interrupt`), so the cleanup that follows an interrupt runs for it too; a
temporary left by a process that was killed outright is recognised by its dead pid, never read
as input (`is_temporary`) and removed by the next writer in that folder (`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["TEMPORARY_PREFIX", "atomic_path", "atomic_folder", "write_text_atomic", "is_temporary",
           "remove_stale_temporaries", "terminate_like_interrupt"]

TEMPORARY_PREFIX = ".ssprompt-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(name: str) -> str:
    return f"{TEMPORARY_PREFIX}{os.getpid()}-{name}."


def is_temporary(path: str | Path) -> bool:
    """Whether `path` is a temporary of an atomic write (this process's, another's, or a dead one's)."""
    return Path(path).name.startswith(TEMPORARY_PREFIX)


def _owner_alive(path: Path) -> bool:
    pid_text = path.name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove the temporaries in `folder` whose writing process is gone; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if is_temporary(entry) and not _owner_alive(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) to write to; renamed onto `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path.name), suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file written in place would follow the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path: str | Path, marker: str) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; moved onto `path` when the block succeeds.

    An existing `path` is replaced only if it is an earlier result of the same job (it holds
    `marker`): it is renamed aside first and restored if the move fails.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_prefix(final.name)))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a folder made in place would follow the umask
        _replace_folder(tmp, final, marker)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(tmp: Path, final: Path, marker: str) -> None:
    backup = None
    if final.exists():
        if not (final / marker).is_file() or Path.cwd().resolve().is_relative_to(final.resolve()):
            raise FileExistsError(f"{final}: not an ssprompt export folder (no {marker}); refusing to replace it")
        backup = final.with_name(f"{_prefix(final.name)}old")
        os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        if backup is not None:
            os.replace(backup, final)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def terminate_like_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does, so `finally` blocks
    remove temporaries before the process ends. Called by every command-line entry point."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
