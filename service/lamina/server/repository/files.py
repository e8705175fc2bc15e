"""Reading a version's files safely, and stamping them so a change on disk is noticed.

A loaded version never keeps a file open or mapped: everything it serves from is read into memory
here, so a file rewritten, truncated or removed on disk can neither crash nor alter it.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

# (relative name, size, inode, modification ns, change ns) per file; a problem reading an entry is
# part of the stamp too, as (relative name, -1, errno, 0, 0).
FileStamp = tuple[tuple[str, int, int, int, int], ...]

_STAMP_DEPTH = 4  # folders below the version's own that are stamped (external data may sit there)
_STAMP_ENTRIES = 10_000  # a bigger tree is not a model version; the stamp says so and stops


def describe(error: OSError) -> str:
    """An OSError as a short reason: 'No such file or directory', not the errno tuple."""
    return error.strerror or type(error).__name__


def read_file(path: Path, *, limit: int | None = None) -> bytes:
    """The whole of a regular file. Anything else (a FIFO, a device, a folder) is refused before
    it is read, so it can never block; `limit` caps the size in bytes."""
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer otherwise.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if limit is not None and status.st_size > limit:
            raise ValueError(f"{path} has {status.st_size} bytes, more than the {limit} allowed")
        os.set_blocking(descriptor, True)
        # readall sizes its buffer from the file's size: one allocation, no joining of chunks.
        with io.FileIO(descriptor, closefd=False) as file:
            data = file.readall()
    finally:
        os.close(descriptor)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path} grew past the {limit} bytes allowed while being read")
    return data


def version_stamp(directory: Path) -> FileStamp:
    """Names, sizes, inodes and times of every file under a version's folder: it changes whenever
    a file is rewritten, replaced, added or removed. Never raises: an unreadable entry is recorded
    with its error."""
    entries: list[tuple[str, int, int, int, int]] = []

    class Full(Exception):
        pass

    def walk(folder: Path, prefix: str, depth: int) -> None:
        try:
            names = sorted(os.listdir(folder))
        except OSError as error:
            entries.append((prefix or ".", -1, error.errno or 0, 0, 0))
            return
        for name in names:
            if len(entries) >= _STAMP_ENTRIES:
                raise Full
            relative = f"{prefix}{name}"
            try:
                status = os.stat(folder / name)  # through symbolic links: their target counts
            except OSError as error:
                entries.append((relative, -1, error.errno or 0, 0, 0))
                continue
            if stat.S_ISDIR(status.st_mode):
                if depth < _STAMP_DEPTH:
                    walk(folder / name, f"{relative}/", depth + 1)
                continue
            entries.append(
                (relative, status.st_size, status.st_ino, status.st_mtime_ns, status.st_ctime_ns)
            )

    try:
        walk(directory, "", 0)
    except Full:
        entries.append(("...", -1, 0, 0, 0))
    return tuple(entries)
