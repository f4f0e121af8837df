"""Atomic writes of files and folders: readers never see half of either, a failure leaves nothing behind.

Temporaries are hidden, named `.ssprompt-tmp-<pid>@<host>-<name>...` beside their final path (the
name cut so the whole stays within a filesystem's 255 bytes), and get the umask's modes when they
are renamed into place. A write that fails (a full disk, say) raises an OSError naming the file.
`exclusive` locks a file or folder against a second writer; `regular_files` is every command's one
listing of input files. SIGTERM is handled like Ctrl-C
(`terminate_like_interrupt`), so the cleanup that follows an interrupt runs for it too; a
temporary left by a process that was killed outright is never read as input (`is_temporary`)
and is removed by the next writer in that folder on the same host, once its pid is gone
(`remove_stale_temporaries`); another host's temporaries are left to that host.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import SSPromptError

__all__ = ["TEMPORARY_PREFIX", "NAME_MAX", "atomic_path", "atomic_folder", "write_text_atomic", "write_bytes_atomic",
           "is_temporary", "remove_stale_temporaries", "terminate_like_interrupt", "exclusive", "LockedError",
           "regular_files", "is_regular_file", "cut_name", "WriteError", "file_sha256"]

TEMPORARY_PREFIX = ".ssprompt-tmp-"
NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
_RANDOM_PART = 8  # mkstemp's random characters
_KEPT_SUFFIX = 16  # bytes of a file's suffix a temporary keeps (the format writers read from it)


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


def cut_name(name: str, limit: int) -> str:
    """`name` cut to at most `limit` bytes of UTF-8, never inside a character."""
    return name.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _suffix(name: str) -> str:
    suffix = Path(name).suffix
    return suffix if len(suffix.encode("utf-8")) <= _KEPT_SUFFIX else ""


def _prefix(name: str) -> str:
    """The temporary's name up to mkstemp's random part; with that part and `name`'s suffix, at most NAME_MAX bytes."""
    head = f"{TEMPORARY_PREFIX}{os.getpid()}@{cut_name(_host(), 32)}-"
    room = NAME_MAX - len(head.encode("utf-8")) - 1 - _RANDOM_PART - len(_suffix(name).encode("utf-8")) - len(".old")
    return f"{head}{cut_name(name, room)}."


class WriteError(SSPromptError, OSError):
    """A write that failed (a full disk, say); the message is one line naming the file, its errno kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _naming(path: Path, err: OSError) -> OSError:
    """`err` with a message that names `path`, for errors (a full disk, say) whose own names nothing or a temporary."""
    if str(path) in str(err):
        return err
    return WriteError(err.errno, f"{path}: cannot write ({err.strerror or err})")


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path.name), suffix=_suffix(path.name))
        os.close(fd)
    except OSError as err:
        raise _naming(path, err) from None
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file written in place would follow the umask
            os.replace(tmp, path)
        except OSError as err:
            raise _naming(path, err) from None
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


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class LockedError(WriteError):
    """Another process holds the lock on an output; the message names it."""


@contextmanager
def exclusive(path: str | Path, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on `path` (a file or folder, existing or not) for the block; raise LockedError
    at once where another process holds it.

    The lock is an flock on a hidden `.<name>.ssprompt-lock` beside `path`, removed on release; a lock
    file replaced while it was being taken is taken again, so two holders never coexist.
    """
    import fcntl

    path = Path(path)
    whole = Path(os.path.abspath(path))  # "." and "out/" have a name to lock by
    lock = whole.parent / f".{cut_name(whole.name or 'root', NAME_MAX - 20)}.ssprompt-lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _naming(path, err) from None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(errno.EBUSY, f"{path}: another ssprompt command is writing this {what}; "
                                               "wait for it to finish") from None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed it after we opened it: take the new one
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


def is_regular_file(path: str | Path) -> bool:
    """A regular file (through links): not a folder, FIFO, socket or device, which would block or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def regular_files(folder: str | Path, suffixes: Iterable[str], recursive: bool = False,
                  exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Every command's one listing of input files: the regular files in `folder` (or under it, with
    `recursive`) whose suffix, lower-cased, is one of `suffixes`, sorted; hidden files and folders
    (temporaries among them), FIFOs, sockets, devices, and anything inside an `exclude` folder (an
    output folder within the input) are left out.
    """
    folder = Path(folder)
    suffixes = {s.lower() for s in suffixes}
    excluded = [Path(e).resolve() for e in exclude]
    found = []
    for entry in (folder.rglob("*") if recursive else folder.iterdir()):
        parts = entry.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or entry.suffix.lower() not in suffixes:
            continue
        if excluded and any(entry.resolve().is_relative_to(e) for e in excluded):
            continue
        if is_regular_file(entry):
            found.append(entry)
    return sorted(found)
