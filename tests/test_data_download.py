"""The fetch path against a loopback HTTP server: a good file, a wrong checksum, a truncated file, a server
error, and no network. A download only ever gets its final name after its md5 matched."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from data_fixtures import md5, loopback_server, write_cifar_archive
from repro.data import fetch_dataset, load_dataset, registry
from repro.data.download import fetch_file
from repro.data.registry import RemoteFile
from repro.errors import ReproError


@pytest.fixture()
def archive(tmp_path):
    path = tmp_path / "served" / "cifar-10-python.tar.gz"
    batches = write_cifar_archive(path, "cifar10", per_batch=10)
    return path, batches


def point_cifar10_at(monkeypatch, url: str, checksum: str) -> None:
    spec = registry.SPECS["cifar10"]
    remote = dataclasses.replace(spec.files[0], url=url, md5=checksum)
    monkeypatch.setitem(registry.SPECS, "cifar10", dataclasses.replace(spec, files=(remote,)))


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_good_download_is_verified_renamed_and_loads(tmp_path, monkeypatch, archive):
    path, batches = archive
    body = path.read_bytes()
    with loopback_server({"/cifar.tgz": (200, body, None)}) as base:
        point_cifar10_at(monkeypatch, f"{base}/cifar.tgz", md5(path))
        data = tmp_path / "data"
        results = fetch_dataset("cifar10", data, progress=False)
        assert results == [(data / "cifar10" / "cifar-10-python.tar.gz", "downloaded")]
        assert (data / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == body
        assert leftovers(data) == ["cifar-10-python.tar.gz", "cifar10"]  # no .part left behind
        # A second fetch finds the verified file and downloads nothing.
        assert fetch_dataset("cifar10", data, progress=False)[0][1] == "present"
    dataset = load_dataset("cifar10", data_dir=data, cache_dir=tmp_path / "cache")
    assert int(dataset.splits["test"][0][3, 2, 0, 1]) == int(batches["test_batch"][b"data"][3][2 * 1024 + 1])


def test_load_with_download_fetches_then_reads(tmp_path, monkeypatch, archive):
    path, _ = archive
    with loopback_server({"/c.tgz": (200, path.read_bytes(), None)}) as base:
        point_cifar10_at(monkeypatch, f"{base}/c.tgz", md5(path))
        with pytest.raises(ReproError, match="not found"):
            load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
        dataset = load_dataset("cifar10", data_dir=tmp_path / "data", download=True, cache_dir=tmp_path / "cache", progress=False)
    assert dataset.counts()["train"] == [5] * 10


def test_wrong_checksum_leaves_nothing(tmp_path, monkeypatch, archive):
    path, _ = archive
    with loopback_server({"/c.tgz": (200, path.read_bytes(), None)}) as base:
        point_cifar10_at(monkeypatch, f"{base}/c.tgz", "0" * 32)
        with pytest.raises(ReproError, match=rf"checksum mismatch for {base}/c.tgz .*md5 {md5(path)}, expected 0{{32}}"):
            fetch_dataset("cifar10", tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == ["cifar10"]


def test_truncated_download_short_file_and_dropped_connection(tmp_path, monkeypatch, archive):
    path, _ = archive
    body = path.read_bytes()
    half = body[: len(body) // 2]
    routes = {
        "/short.tgz": (200, half, None),  # the server sends a complete, but cut, file
        "/dropped.tgz": (200, half, len(body)),  # promises the whole file, then closes the connection
    }
    with loopback_server(routes) as base:
        point_cifar10_at(monkeypatch, f"{base}/short.tgz", md5(path))
        with pytest.raises(ReproError, match=r"checksum mismatch"):
            fetch_dataset("cifar10", tmp_path / "data", progress=False)
        point_cifar10_at(monkeypatch, f"{base}/dropped.tgz", md5(path))
        with pytest.raises(ReproError, match=rf"download of {base}/dropped.tgz (was interrupted|is truncated)"):
            fetch_dataset("cifar10", tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == ["cifar10"]


def test_server_error(tmp_path, monkeypatch):
    with loopback_server({"/c.tgz": (500, b"boom", None)}) as base:
        point_cifar10_at(monkeypatch, f"{base}/c.tgz", "0" * 32)
        with pytest.raises(ReproError, match=r"failed: the server answered HTTP 500"):
            fetch_dataset("cifar10", tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == ["cifar10"]


def test_no_network(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on: connection refused, as with no network
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = RemoteFile("x.tar.gz", f"http://127.0.0.1:{port}/x.tar.gz", "0" * 32)
    with pytest.raises(ReproError, match=r"cannot download .*x.tar.gz .*no network\? copy x.tar.gz into"):
        fetch_file(remote, tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_corrupt_local_copy_is_downloaded_again(tmp_path, monkeypatch, archive):
    path, _ = archive
    target = tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a file")
    with loopback_server({"/c.tgz": (200, path.read_bytes(), None)}) as base:
        point_cifar10_at(monkeypatch, f"{base}/c.tgz", md5(path))
        assert fetch_dataset("cifar10", tmp_path / "data", progress=False)[0][1] == "downloaded"
    assert md5(target) == md5(path)


def test_fashion_mnist_from_debian_needs_no_download(tmp_path):
    if not (registry.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    results = fetch_dataset("fashion-mnist", tmp_path / "data", progress=False)
    assert [status for _, status in results] == ["present"] * 4
    assert all(path.parent == registry.FASHION_MNIST_SYSTEM_DIR for path, _ in results)
    assert not (tmp_path / "data").exists()
