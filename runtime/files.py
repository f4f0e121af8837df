"""Atomic writes of files and folders: readers never see half of either, a failure leaves nothing behind.

Temporaries are hidden, named `.ssprompt-tmp-<pid>@<host>-<name>...` beside their final path, and
get the umask's modes when they are renamed into place. SIGTERM is handled like Ctrl-C
(`terminate_like_interrupt`), so the cleanup that follows an interrupt runs for it too; a
temporary left by a process that was killed outright is never read as input (`is_temporary`)
and is removed by the next writer in that folder on the same host, once its pid is gone
(`remove_stale_temporaries`); another host's temporaries are left to that host.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["TEMPORARY_PREFIX", "atomic_path", "atomic_folder", "write_text_atomic", "write_bytes_atomic", "is_temporary",
           "remove_stale_temporaries", "terminate_like_interrupt"]

TEMPORARY_PREFIX = ".ssprompt-tmp-"


def _umask() -> int:
    try:  # Linux: read without changing it, so no other thread ever creates a file under umask 0
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    return "".join(c for c in socket.gethostname() if c.isascii() and c.isalnum()) or "host"


def _prefix(name: str) -> str:
    return f"{TEMPORARY_PREFIX}{os.getpid()}@{_host()}-{name}."


def is_temporary(path: str | Path) -> bool:
    """Whether `path` is a temporary of an atomic write (this process's, another's, or a dead one's)."""
    return Path(path).name.startswith(TEMPORARY_PREFIX)


def _owner_alive(path: Path) -> bool:
    """False only for a temporary of this host whose process is gone."""
    owner = path.name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
    pid, _, host = owner.partition("@")
    if host != _host() or not (pid.isascii() and pid.isdigit()):
        return True  # another host's, or not a name this module made: not ours to judge
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):
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
        if not (final / marker).is_file():
            raise FileExistsError(f"{final}: not an ssprompt export folder (no {marker}); refusing to replace it")
        if Path.cwd().resolve().is_relative_to(final.resolve()):
            raise FileExistsError(f"{final}: the current folder is inside it; refusing to replace it")
    try:
        if final.exists():
            backup = final.with_name(f"{_prefix(final.name)}old")
            os.replace(final, backup)
        os.replace(tmp, final)
    except BaseException:
        if backup is not None and backup.exists() and not final.exists():
            os.replace(backup, final)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def terminate_like_interrupt(replace: bool = False) -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does, so `finally` blocks
    remove temporaries before the process ends. Called by every command-line entry point; a handler
    already set (by a library) is replaced only with `replace`."""
    if replace or signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
