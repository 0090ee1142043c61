"""`repro data list|info|fetch|verify` through Typer's CliRunner, including every bad-input case: each gives
one clear `Error:` line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from typer.testing import CliRunner

from data_fixtures import CLASSES10, image_tree, loopback_server, md5, write_cifar_archive, write_tree_archive, write_tree_folder
from repro.cli import app
from repro.data import registry

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPRO_DATA", raising=False)


def run(*args):
    return runner.invoke(app, ["data", *[str(a) for a in args]])


def error_line(result, exit_code=1) -> str:
    """The one error line; fails if the command succeeded, printed a traceback or said more than one line."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    stderr = result.stderr.strip()
    assert stderr.startswith("Error: ") and "\n" not in stderr, stderr
    return stderr


def point_cifar10_at(monkeypatch, url, checksum):
    spec = registry.SPECS["cifar10"]
    remote = dataclasses.replace(spec.files[0], url=url, md5=checksum)
    monkeypatch.setitem(registry.SPECS, "cifar10", dataclasses.replace(spec, files=(remote,)))


def test_list_shows_every_dataset_and_its_status(tmp_path):
    result = run("list", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.output
    for name in registry.list_datasets():
        assert name in result.output
    assert "embedded" in result.output and "missing" in result.output


def test_info_of_synthetic_reports_counts():
    result = run("info", "synthetic")
    assert result.exit_code == 0, result.output
    assert "3x32x32, 10 classes" in result.output and "10000" in result.output and "2000" in result.output


def test_info_of_a_missing_dataset_says_where_and_how(tmp_path):
    result = run("info", "cifar100", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "status: missing" in text and "repro data fetch cifar100" in text


@pytest.mark.parametrize("command", ["info", "fetch", "verify"])
def test_unknown_dataset_lists_the_valid_ones(command):
    line = error_line(run(command, "cifar11"), exit_code=2)
    assert line == "Error: unknown dataset 'cifar11'; valid: cifar10, cifar10-jpeg, cifar100, cinic10, fashion-mnist, imagefolder, synthetic"


def test_missing_data_says_where_it_looked_and_the_fetch_command(tmp_path):
    line = error_line(run("verify", "cifar10", "--data-dir", tmp_path))
    assert f"looked for cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/) in {tmp_path}/cifar10, {tmp_path}" in line
    assert f"`repro data fetch cifar10 --data-dir {tmp_path}`" in line


def test_fetch_without_network(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_cifar10_at(monkeypatch, f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", "0" * 32)
    line = error_line(run("fetch", "cifar10", "--data-dir", tmp_path))
    assert "cannot download" in line and "no network?" in line
    assert not (tmp_path / "cifar10" / "cifar-10-python.tar.gz.part").exists()


def test_fetch_then_verify_against_a_loopback_server(tmp_path, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    write_cifar_archive(archive, "cifar10", per_batch=10)
    with loopback_server({"/c.tgz": (200, archive.read_bytes(), None), "/bad": (500, b"", None)}) as base:
        point_cifar10_at(monkeypatch, f"{base}/bad", md5(archive))
        assert "HTTP 500" in error_line(run("fetch", "cifar10", "--data-dir", tmp_path / "data"))
        point_cifar10_at(monkeypatch, f"{base}/c.tgz", md5(archive))
        result = run("fetch", "cifar10", "--data-dir", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "downloaded:" in result.output
    result = run("verify", "cifar10", "--data-dir", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "md5 ok" in result.output and "reads cleanly" in result.output and "50000" not in result.output


def test_checksum_mismatch(tmp_path):
    write_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar10", per_batch=2)
    line = error_line(run("verify", "cifar10", "--data-dir", tmp_path))
    assert "checksum mismatch for" in line and "expected c58f30108f718f92721af3b95e74349a" in line


@pytest.mark.parametrize("content", ["truncated", "not-an-archive"])
def test_truncated_or_non_archive_file(tmp_path, content):
    path = tmp_path / "images.tar.gz"
    write_tree_archive(path, image_tree({"train": 20, "test": 5}, ["a", "b"], size=16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else b"just some text\n" * 100)
    line = error_line(run("verify", "imagefolder", "--data-dir", path))
    assert f"{path} is truncated or not a .tar.gz archive" in line


def test_imagefolder_needs_a_root():
    assert "imagefolder needs --data-dir ROOT" in error_line(run("verify", "imagefolder"))


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("no-class-folders", "train/ has no class folders"),
        ("empty-class", "class folder train/dog is empty"),
        ("unreadable-image", "cannot read image {root}/train/cat/corrupt.jpg"),
    ],
)
def test_bad_image_folders(tmp_path, damage, expected):
    root = tmp_path / "root"
    write_tree_folder(root, image_tree({"train": 2, "test": 1}, ["cat", "dog"], size=8))
    if damage == "no-class-folders":
        for path in (root / "train").rglob("*.png"):
            path.unlink()
        for folder in (root / "train").iterdir():
            folder.rmdir()
    elif damage == "empty-class":
        for path in (root / "train" / "dog").iterdir():
            path.unlink()
    else:
        (root / "train" / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    line = error_line(run("verify", "imagefolder", "--data-dir", root))
    assert expected.format(root=root) in line


def test_corrupt_cache_is_rebuilt_not_a_crash(tmp_path):
    root = tmp_path / "root"
    write_tree_folder(root, image_tree({"train": 3, "test": 1}, CLASSES10[:3], size=8))
    assert run("verify", "imagefolder", "--data-dir", root).exit_code == 0
    (cache_file,) = (tmp_path / "cache").glob("imagefolder-*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    result = run("info", "imagefolder", "--data-dir", root)
    assert result.exit_code == 0, result.output
    assert "3x8x8, 3 classes" in result.output and cache_file.stat().st_size > 1000


def test_fetch_of_embedded_and_own_datasets():
    result = run("fetch", "synthetic")
    assert result.exit_code == 0 and "nothing to fetch" in result.output
    assert "nothing to fetch" in error_line(run("fetch", "imagefolder"))


def test_a_data_folder_that_cannot_be_created_is_one_line(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    line = error_line(run("fetch", "cifar10", "--data-dir", not_a_folder))
    assert "Not a directory" in line and str(not_a_folder) in line


def test_fetch_of_a_file_without_a_public_url_says_where_to_put_it(tmp_path):
    line = error_line(run("fetch", "cifar10-jpeg", "--data-dir", tmp_path))
    assert "cifar10-jpeg.tar.gz cannot be downloaded" in line and str(tmp_path) in line
