"""The IDX file format: bounded gunzip, header checks, and parsing to NumPy arrays.

IDX files may be raw or gzip-compressed; gzip is recognised by its magic
bytes, never by the file name. Every read and every decompression is bounded
by :data:`MAX_FILE_BYTES`, so neither a hostile file nor a gzip bomb can
exhaust memory.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "MAX_FILE_BYTES",
    "DataError",
    "gunzip",
    "is_gzip",
    "maybe_gunzip",
    "parse_idx",
    "read_file",
    "read_idx",
    "where",
]

# Upper bound on any file we read, download or decompress. The largest real
# file (train images) is 47 MB decompressed; the bound keeps a hostile mirror
# or a gzip bomb from exhausting memory. Other modules read it as
# ``idx.MAX_FILE_BYTES`` (not a copy), so patching it here bounds them all.
MAX_FILE_BYTES = 256 * 1024 * 1024

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}  # the only element type MNIST-style files use
_MAX_NDIM = 4


class DataError(Exception):
    """Any failure to read, verify, obtain or split a dataset."""


def where(source: str | os.PathLike[str] | None) -> str:
    """Prefix for error messages: the file path when known."""
    return f"{source}: " if source is not None else ""


def is_gzip(buf: bytes) -> bool:
    """Whether ``buf`` starts with the gzip magic bytes (the name of a file says nothing)."""
    return buf[:2] == _GZIP_MAGIC


def gunzip(buf: bytes, source: str | os.PathLike[str] | None = None) -> bytes:
    """Decompress a gzip buffer, bounded by ``MAX_FILE_BYTES``.

    The bound is enforced while decompressing (read at most one byte past it),
    so a tiny gzip bomb cannot allocate gigabytes.
    """
    # One zlib call per gzip member (not GzipFile's 8 KB reads): zlib releases
    # the GIL while it inflates, so a file loads at full speed even while
    # another thread runs Python (a run opens MLflow meanwhile).
    parts: list[bytes] = []
    size = 0
    rest = buf
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=31)  # gzip header and trailer (CRC, length) checked
            part = inflater.decompress(rest, MAX_FILE_BYTES + 1 - size)
            size += len(part)
            parts.append(part)
            if size > MAX_FILE_BYTES:
                raise DataError(f"{where(source)}decompressed size exceeds {MAX_FILE_BYTES} bytes")
            if not inflater.eof:
                raise DataError(f"{where(source)}corrupt gzip data (truncated)")
            rest = inflater.unused_data  # a further member, as gzip allows
    except zlib.error as exc:
        raise DataError(f"{where(source)}corrupt gzip data ({exc})") from exc
    return b"".join(parts)


def maybe_gunzip(buf: bytes, source: str | os.PathLike[str] | None = None) -> bytes:
    """Return the decompressed bytes if ``buf`` starts with the gzip magic, else ``buf``."""
    return gunzip(buf, source) if is_gzip(buf) else buf


def parse_idx(buf: bytes, source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Parse an IDX buffer (raw, or gzip-compressed: detected by magic bytes).

    Layout: two zero bytes, a dtype code (only ``0x08`` = uint8 is supported),
    the number of dimensions ``ndim`` (1..4), ``ndim`` big-endian uint32 sizes,
    then the elements in C order.

    Args:
        buf: file contents.
        source: path used in error messages, if known.

    Returns:
        A read-only ``uint8`` array of shape ``dims`` (e.g. ``(N, 28, 28)`` for
        images, ``(N,)`` for labels) viewing the decompressed buffer.

    Raises:
        DataError: bad magic, unsupported dtype, bad ndim, size mismatch
        (truncated or trailing bytes) or corrupt gzip.
    """
    buf = maybe_gunzip(bytes(buf), source)
    at = where(source)
    if len(buf) < 4:
        raise DataError(f"{at}too short for an IDX header ({len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{at}not an IDX file (magic bytes {buf[:2].hex()}, expected 0000)")
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{at}unsupported IDX dtype code 0x{code:02x} (only 0x08 = uint8)")
    if not 1 <= ndim <= _MAX_NDIM:
        raise DataError(f"{at}unsupported IDX ndim {ndim} (expected 1..{_MAX_NDIM})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{at}truncated IDX header ({len(buf)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = _IDX_DTYPES[code]
    # Python ints do not overflow, and the size is checked against the buffer
    # before any array exists, so a forged header cannot trigger a huge allocation.
    expected = math.prod(dims) * dtype.itemsize
    actual = len(buf) - header
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes"
        raise DataError(f"{at}{what}: header dims {dims} need {expected} data bytes, found {actual}")
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) from ``path``; see :func:`parse_idx`."""
    return parse_idx(read_file(Path(path)), source=path)


def read_file(path: Path) -> bytes:
    """Read a whole local file, refusing anything larger than ``MAX_FILE_BYTES``."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path}: file too large ({size} bytes)")
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
