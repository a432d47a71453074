"""The one way freelabel writes a file or a folder: whole, or not at all.

    temporary = ".NAME.PID-TOKEN.tmp" beside the target     # same folder, so the rename stays on one disk
    check free space (when the size is known)
    write the temporary; fsync it (every file of a folder, and the folder)
    rename it over the target (a folder: swapped in with renameat2's RENAME_EXCHANGE)
    fsync the parent folder                                  # the rename itself is durable
    on any failure: remove the temporary; the target is what it was

A reader, at any moment, finds the old file or the new one, never a torn one, even after ``kill -9``
(then no clean-up runs: the next write to the same folder removes a temporary whose writer is gone). A
full disk is one :class:`DiskFullError` line, whatever library was writing. Append-only logs that must
survive a crash line by line (COCO partials, labels) are a :class:`Journal`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError

ADVICE = "free some space and run the command again"
_UMASK = os.umask(0o022)  # read once (os.umask can only read by setting); put back on the next line
os.umask(_UMASK)
ASIDE = ".old-"  # a replaced folder kept under this prefix while a swap without RENAME_EXCHANGE is under way
_LOW = 1 << 20  # a write that fails with less free space than this (or than it needed) failed for want of room


# ----------------------------------------------------------------------------------------- public API
def write_bytes(path: str | os.PathLike, data: bytes, advice: str = ADVICE) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_file(path, size=len(data), advice=advice) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, advice: str = ADVICE) -> Path:
    """Write ``text`` as UTF-8 (names that are not UTF-8 keep their own bytes) atomically and durably."""
    return write_bytes(path, text.encode("utf-8", errors="surrogateescape"), advice)


def write_json(path: str | os.PathLike, data, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


@contextmanager
def atomic_file(path: str | os.PathLike, size: int | None = None, advice: str = ADVICE) -> Iterator[Path]:
    """A temporary path for any writer (``torch.save``, safetensors, faiss, PIL) that becomes ``path`` when
    the block ends without error. ``size``: bytes expected, checked against the free space first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    check_space(path.parent, size, path.name, advice)
    tmp = _temporary(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # as any new file, whatever the writer created it with
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_if_full(e, path, size, advice)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike, size: int | None = None, advice: str = ADVICE) -> Iterator[Path]:
    """A temporary folder to fill that replaces the folder ``path`` whole when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    remove_stale(path.parent)
    check_space(path.parent, size, path.name, advice)
    tmp = _temporary(path)
    tmp.mkdir()
    try:
        yield tmp
        for sub in sorted(tmp.rglob("*"), reverse=True):  # files first, then their folders
            if sub.is_file() and not sub.is_symlink():
                os.chmod(sub, 0o666 & ~_UMASK)  # as any new file, whatever the writer created it with
            _fsync(sub)
        _fsync(tmp)
        _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_full(e, path, size, advice)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the old contents


def recover(path: str | os.PathLike) -> None:
    """Put back a folder renamed aside by a swap that was killed before its replacement arrived."""
    path = Path(path)
    aside = path.with_name(ASIDE + path.name)
    if aside.exists():
        if path.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, path)
            _fsync(path.parent)


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` left by writers that were killed (their process is gone)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        ours = _TEMPORARY.fullmatch(tmp.name)
        if ours and not _alive(int(ours[1])):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class Journal:
    """An append-only file of JSON lines, each batch of lines synced as it is appended: a crash loses at
    most the lines being written, and a torn last line is cut off when the journal is opened again."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._checked = False  # whether a torn tail was looked for since this object was made

    def read(self) -> list:
        """The whole lines written so far (a torn tail is removed from the file)."""
        if not self.path.is_file():
            return []
        self._cut_torn_tail()
        records = []
        for line in self.path.read_bytes().decode("utf-8", errors="surrogateescape").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line an older writer tore; the rest is still good
                continue
        return records

    def append(self, records: Iterable) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8", errors="surrogateescape")
        new = not self.path.exists()
        if not new and not self._checked:
            self._cut_torn_tail()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(lines)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException as e:  # no half line left behind for the next append to run into
                os.ftruncate(fd, end)
                _raise_if_full(e, self.path, len(lines), ADVICE)
                raise
        finally:
            os.close(fd)
        if new:
            _fsync(self.path.parent)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def _cut_torn_tail(self) -> None:
        """Truncate the file after its last newline: what follows is a line a killed writer left half-done."""
        self._checked = True
        with open(self.path, "r+b") as f:
            end = pos = f.seek(0, os.SEEK_END)
            keep = 0
            while pos > 0:
                start = max(0, pos - 4096)
                f.seek(start)
                at = f.read(pos - start).rfind(b"\n")
                if at >= 0:
                    keep = start + at + 1
                    break
                pos = start
            if keep < end:
                f.truncate(keep)
                os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------- the parts
_TEMPORARY = re.compile(r"\..+\.(\d+)-[0-9a-f]{8}\.tmp")  # what :func:`_temporary` names, with the writer's pid


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    if path.is_symlink():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2); False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(new: Path, path: Path) -> None:
    """Make ``new`` the folder ``path``; the old contents end up in ``new`` (to be deleted)."""
    if not path.exists():
        os.replace(new, path)
    elif not _exchange(new, path):  # an aside name that :func:`recover` puts back if we are killed
        aside = path.with_name(ASIDE + path.name)
        os.replace(path, aside)
        _fsync(path.parent)
        os.replace(new, path)
        _fsync(path.parent)
        os.replace(aside, new)
    _fsync(path.parent)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def check_space(folder: Path, needed: int | None, what: str, advice: str) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"no space for {what} in {folder}: it needs {_size(needed)}, {_size(free)} are free; {advice}"
        )


def _raise_if_full(e: BaseException, path: Path, size: int | None, advice: str) -> None:
    """Turn a write that failed for want of room into one :class:`DiskFullError`, however the library
    said it (an OSError, a message naming errno 28, or a bare failure with the disk now full)."""
    if isinstance(e, DiskFullError) or not isinstance(e, Exception):
        return
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or "No space left on device" in str(e) or "os error 28" in str(e)
    if not full:
        try:
            full = shutil.disk_usage(path.parent).free < max(size or 0, _LOW)
        except OSError:
            return
    if full:
        raise DiskFullError(f"no space left in {path.parent} for {path.name}; {advice}") from None
