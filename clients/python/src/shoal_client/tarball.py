"""Folders travel as tar archives, packed exactly as ``submit`` packs them
(``pack_dir`` in ``worker/src/stage/tarball.rs``, the Rust ``tar`` crate's
GNU headers), so the same folder has the same sha256 whichever client
uploads it, and the cache holds it once.

The format: GNU headers (magic ``"ustar "``, version ``" \\0"``), one entry
per folder and regular file below the root (not the root itself), sorted
by path component by component, mode 0755 for folders and 0644 for files,
uid, gid and mtime 0, no user or group names; a path longer than 100 bytes
is preceded by a GNU ``././@LongLink`` (type ``L``) entry; symlinks and
special files are left out; two zero blocks at the end. The worker's
unpacker (the same crate) accepts regular files and folders and refuses
any entry that would land outside the destination.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO
from collections.abc import Iterator

BLOCK = 512
_NAME_LEN = 100


def _octal(value: int, width: int) -> bytes:
    """A numeric field as the tar crate writes it: octal, zero-padded, NUL
    last; GNU's base-256 form when it does not fit."""
    if value >= 8**11 or (width == 8 and value >= 8**7):
        out = bytearray(width)
        out[width - 8 :] = value.to_bytes(8, "big")
        out[0] |= 0x80
        return bytes(out)
    digits = format(value, "o").encode()
    return digits.rjust(width - 1, b"0")[-(width - 1) :] + b"\0"


def _header(name: bytes, mode: int, size: int, kind: bytes) -> bytes:
    h = bytearray(BLOCK)
    h[0 : len(name)] = name
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(0, 8)  # uid
    h[116:124] = _octal(0, 8)  # gid
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(0, 12)  # mtime
    h[156:157] = kind
    h[257:263] = b"ustar "
    h[263:265] = b" \0"
    h[148:156] = b" " * 8
    checksum = sum(h)
    h[148:156] = _octal(checksum, 8)
    return bytes(h)


def _truncated(path: bytes) -> bytes:
    """The name kept in the header of an entry whose path needed a
    LongLink: its first 100 bytes (cut back to whole UTF-8 characters),
    with empty and ``.`` components dropped, as the tar crate does."""
    head = path[:_NAME_LEN]
    while head:
        try:
            head.decode("utf-8")
            break
        except UnicodeDecodeError as e:
            head = head[: e.start]
    parts = [p for p in head.split(b"/") if p not in (b"", b".")]
    name = b"/".join(parts)
    if head.endswith(b"/") and name:
        name += b"/"
    return name


def _entries(root: Path) -> list[tuple[tuple[bytes, ...], Path, bool]]:
    """(path components, host path, is a folder) for every folder and
    regular file below ``root``, links not followed, sorted by components."""
    found: list[tuple[tuple[bytes, ...], Path, bool]] = []

    def walk(folder: Path, prefix: tuple[bytes, ...]) -> None:
        with os.scandir(folder) as it:
            children = list(it)
        for child in children:
            parts = prefix + (os.fsencode(child.name),)
            st = child.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                found.append((parts, Path(child.path), True))
                walk(Path(child.path), parts)
            elif stat.S_ISREG(st.st_mode):
                found.append((parts, Path(child.path), False))

    walk(root, ())
    found.sort(key=lambda entry: entry[0])
    return found


def _chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise OSError("a file shrank while it was being packed")
        left -= len(chunk)
        yield chunk


def write_dir(root: str | os.PathLike[str], out: BinaryIO) -> None:
    """Writes the archive of the folder ``root`` to ``out``, streaming file
    contents (memory stays flat whatever the folder's size)."""
    for parts, host, is_dir in _entries(Path(root)):
        path = b"/".join(parts)
        if b"\0" in path:
            raise ValueError(f"{host}: a path with a NUL byte cannot be archived")
        if len(path) > _NAME_LEN:
            out.write(_header(b"././@LongLink", 0o644, len(path) + 1, b"L"))
            data = path + b"\0"
            out.write(data + b"\0" * (-len(data) % BLOCK))
            name = _truncated(path)
        else:
            name = path
        if is_dir:
            out.write(_header(name, 0o755, 0, b"5"))
            continue
        with open(host, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            out.write(_header(name, 0o644, size, b"0"))
            for chunk in _chunks(f, size):
                out.write(chunk)
        out.write(b"\0" * (-size % BLOCK))
    out.write(b"\0" * (2 * BLOCK))


def pack_dir(root: str | os.PathLike[str]) -> bytes:
    """The archive of the folder ``root``, in memory."""
    import io

    buf = io.BytesIO()
    write_dir(root, buf)
    return buf.getvalue()
