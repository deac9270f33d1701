"""End-to-end tests of the command line (main.py): training, result folders, checkpoints and
resume, bad input, presets, the plotcurves / receipe actions, and re-rendering a folder.

Every run is a subprocess `python main.py ...` with cwd = the repository, an explicit
--data-dir <repo>/data and a --results-dir under tmp_path, so nothing is written in the repo.
Subprocesses run with OMP_NUM_THREADS=1: on a small shared machine several of them run at once
(see `run_many`), and torch's OpenMP threads would otherwise oversubscribe the cores (a
1-thread P-1h epoch is several times faster there than a 2-thread one).  Determinism is compared
between runs that share this setting.
"""
import concurrent.futures
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.image import imread  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
RAW = DATA / "MNIST" / "raw"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
ENV.pop("EP_DATA_DIR", None)
TIMEOUT = 600  # per subprocess; a hung run fails instead of blocking CI
WORKERS = 4

# The names of the timing entries of results.json.  `strip_timing` drops every key that holds a
# duration, so that a naming slip there does not hide a real determinism failure (the names
# themselves are checked in test_benchmark_result_folder).
TIMING_KEYS = ("seconds_tab", "seconds_bptt_tab", "elapsed_time")

# The preset names of the original README's commands.
PRESET_NAMES = ["EB-1h", "EB-2h", "P-1h", "P-2h", "P-3h", "P-conv", "fig2-toy",
                "fig3-EB-1h", "fig3-EB-2h", "fig3-EB-3h", "fig3-P-1h", "fig3-P-2h", "fig3-P-3h",
                "fig4-conv", "fig8-EB-1h", "fig9-EB-2h", "fig10-EB-3h", "fig11-P-1h", "fig12-P-2h",
                "fig13-P-3h", "fig16-conv"]

P1H_PER_EPOCH = ["error_train_tab", "error_test_tab", "loss_tab", "seconds_tab"]
P1H_PER_EPOCH_BPTT = ["error_train_bptt_tab", "error_test_bptt_tab", "loss_bptt_tab", "seconds_bptt_tab"]


# ------------------------------------------------------------------------------------------------
# helpers

def main_cmd(*args):
    return [sys.executable, "main.py", *map(str, args)]


def io_args(results_dir):
    return ["--data-dir", str(DATA), "--results-dir", str(results_dir)]


def run_main(*args, timeout=TIMEOUT, cwd=REPO):
    return subprocess.run(main_cmd(*args), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def run_many(arg_lists):
    """Run several `main.py` commands concurrently; returns their CompletedProcess in order."""
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        return list(ex.map(lambda a: run_main(*a), arg_lists))


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def load(path):
    return json.loads(Path(path).read_text())


def strip_timing(res):
    return {k: v for k, v in res.items() if k not in TIMING_KEYS and not k.startswith("seconds")}


def train_trials(results_dir, name="ep_disc_1hidden"):
    """Trial folders of train runs: <results>/<name>/cpu-<date>/Trial-<k>."""
    return sorted(Path(results_dir).glob(f"{name}/cpu-*/Trial-*"))


def only_trial(results_dir, name="ep_disc_1hidden"):
    trials = train_trials(results_dir, name)
    assert len(trials) == 1, f"expected one trial folder, found {trials}"
    return trials[0]


def decodable_png(path):
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50 and img.shape[2] in (3, 4), img.shape
    return img


def tmp_leftovers(root):
    return [p for p in Path(root).rglob("*") if ".tmp" in p.name]


def snapshot(root):
    """Every path under root with the sha256 of its content (None for a folder): a bad run must
    neither add, remove nor rewrite anything, not even a file's bytes."""
    def digest(p):
        return None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return {str(p.relative_to(root)): digest(p) for p in Path(root).rglob("*")}


HAVE_MNIST = all((RAW / n).is_file() or (RAW / (n + ".gz")).is_file()
                 for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


@pytest.fixture(scope="module")
def mnist_present():
    """The real MNIST must be there (the Makefile copies it): fail instead of downloading."""
    assert HAVE_MNIST, f"MNIST files missing in {RAW} (run `make data`)"


# ------------------------------------------------------------------------------------------------
# 1, 2, 8: a P-1h benchmark run (EP + BPTT), twice with the same seed

P1H = ["--preset", "P-1h", "--epochs", 1, "--train-subset", 2000, "--test-subset", 1000, "--seed", 1, "--quiet"]


@pytest.fixture(scope="module")
def p1h_pair(tmp_path_factory, mnist_present):
    root = tmp_path_factory.mktemp("p1h")
    dirs = [root / "a" / "results", root / "b" / "results"]
    day0 = datetime.date.today()
    procs = run_many([P1H + io_args(d) for d in dirs])
    day1 = datetime.date.today()
    for p in procs:
        ok(p)
    return dict(dirs=dirs, procs=procs, days={day0.isoformat(), day1.isoformat()})


@pytest.mark.mnist
@pytest.mark.slow
def test_training_beats_chance_and_is_deterministic(p1h_pair):
    a, b = (load(only_trial(d) / "results.json") for d in p1h_pair["dirs"])
    assert strip_timing(a) == strip_timing(b)
    # measured: EP 23.1 %, BPTT 26.8 % test error (chance: 90 %)
    assert a["error_test_tab"][0] < 50, a
    assert "error_test_bptt_tab" in a, \
        f"no BPTT test error under the original's name error_test_bptt_tab: keys {sorted(a)}"
    assert a["error_test_bptt_tab"][0] < 50, a


@pytest.mark.mnist
@pytest.mark.slow
def test_benchmark_result_folder(p1h_pair):
    import torch
    import torchvision

    results_dir = p1h_pair["dirs"][0]
    trial = only_trial(results_dir)
    date_dir = trial.parent
    assert trial.name == "Trial-1"
    assert trial.parent.parent == results_dir / "ep_disc_1hidden"
    assert re.fullmatch(r"cpu-\d{4}-\d{2}-\d{2}", date_dir.name), date_dir.name
    assert date_dir.name[4:] in p1h_pair["days"]
    files = {p.name for p in trial.iterdir()}
    assert {"hyperparameters.txt", "config.json", "results.json", "checkpoint.pt", "plotFunctions.py",
            "error.png"} <= files, files
    assert not tmp_leftovers(results_dir)

    # hyperparameters.txt in the original's format
    lines = (trial / "hyperparameters.txt").read_text().splitlines()
    assert lines[0].startswith(" TRAINING: list of hyperparameters (") and lines[0].endswith(") "), lines[0]
    assert "ep_disc_1hidden" in lines[0]
    for want in ("- T: 40", "- Kmax: 15", "- batch size: 20", "- number of epochs: 1"):
        assert want in lines, (want, lines)
    beta = [ln for ln in lines if ln.startswith("- beta:")]
    assert beta and float(beta[0].split(":")[1]) == pytest.approx(0.1), lines
    lr = [ln for ln in lines if "learning rate" in ln.lower()]
    assert lr and "0.04" in lr[0] and "0.08" in lr[0], lines

    # config.json
    cfg = load(trial / "config.json")
    assert cfg["seed"] == 1 and cfg["args"]["seed"] == 1
    assert cfg["args"]["T"] == 40 and cfg["args"]["Kmax"] == 15 and cfg["args"]["benchmark"] is True
    assert cfg["args"]["lr_tab"] == [0.04, 0.08]
    assert "main.py" in cfg["command"] and "--preset P-1h" in cfg["command"]
    assert cfg["versions"]["torch"] == torch.__version__
    assert cfg["versions"]["torchvision"] == torchvision.__version__
    assert cfg["versions"]["python"] == platform.python_version()
    assert cfg["device"] == "cpu"

    # results.json: per-epoch lists for EP and for BPTT
    res = load(trial / "results.json")
    assert res["epochs_done"] == 1
    missing = [k for k in P1H_PER_EPOCH + P1H_PER_EPOCH_BPTT if k not in res]
    assert not missing, f"results.json lacks {missing}; it has {sorted(res)}"
    for k in P1H_PER_EPOCH + P1H_PER_EPOCH_BPTT:
        assert isinstance(res[k], list) and len(res[k]) == 1 and np.isfinite(res[k][0]), (k, res[k])
    for k in ("error_train_tab", "error_test_tab", "error_train_bptt_tab", "error_test_bptt_tab"):
        assert 0 <= res[k][0] <= 100

    # checkpoint.pt: plain tensors and containers only
    ck = torch.load(trial / "checkpoint.pt", weights_only=True, map_location="cpu")
    # no RNG states: training draws no random numbers (the data order is a function of seed and epoch)
    assert set(ck) == {"epoch", "net", "net_bptt", "results"}, set(ck)
    assert ck["epoch"] == 1
    assert ck["net"].keys() == ck["net_bptt"].keys() and len(ck["net"]) > 0
    for k in ck["net"]:
        assert ck["net"][k].shape == ck["net_bptt"][k].shape
    assert any(not torch.equal(ck["net"][k], ck["net_bptt"][k]) for k in ck["net"])  # both trained
    assert json.loads(json.dumps(ck["results"])) == res

    # the figure and its script
    assert (trial / "plotFunctions.py").read_bytes() == (REPO / "plotFunctions.py").read_bytes()
    decodable_png(trial / "error.png")


@pytest.mark.mnist
@pytest.mark.slow
def test_plotfunctions_redraws_a_train_folder(p1h_pair, tmp_path):
    src = only_trial(p1h_pair["dirs"][0])
    folder = tmp_path / "Trial-1"
    shutil.copytree(src, folder)
    # 1. inside the folder, with the copy of plotFunctions.py the run left there
    (folder / "error.png").unlink()
    p = subprocess.run([sys.executable, "plotFunctions.py"], cwd=folder, env=ENV, capture_output=True,
                       text=True, timeout=TIMEOUT)
    ok(p)
    decodable_png(folder / "error.png")
    # 2. the repository's script, given the folder
    before = (folder / "error.png").stat().st_mtime_ns
    time.sleep(0.05)
    p = subprocess.run([sys.executable, str(REPO / "plotFunctions.py"), str(folder)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=TIMEOUT)
    ok(p)
    assert (folder / "error.png").stat().st_mtime_ns > before
    decodable_png(folder / "error.png")


# ------------------------------------------------------------------------------------------------
# 3: bad input -> exit 2, one line on stderr, nothing written

# a valid tiny train command; each case appends what makes it wrong (argparse: the last one wins)
BASE = ["--size_tab", 10, 32, 784, "--lr_tab", 0.1, 0.05, "--T", 5, "--Kmax", 2, "--epochs", 1,
        "--train-subset", 20, "--test-subset", 20, "--seed", 0, "--quiet"]
TOY = ["--toymodel", "--no-clamp", "--batch-size", 1, "--size_tab", 10, 50, 5, "--activation-function", "tanh",
       "--dt", 0.08, "--beta", 0.01, "--T", 20, "--Kmax", 5, "--seed", 0, "--quiet"]


def _foreign_config(tmp):
    d = tmp / "foreign"
    d.mkdir()
    (d / "config.json").write_text('{"args": {"action": "train"}}\n')  # JSON, but not this program's
    (d / "checkpoint.pt").write_bytes(b"")
    return ["--resume", d]


def _corrupt_config(tmp):
    d = tmp / "corrupt"
    d.mkdir()
    (d / "config.json").write_text("{ not json\n")
    (d / "checkpoint.pt").write_bytes(b"")
    return ["--resume", d]


def import_main():
    sys.path.insert(0, str(REPO))
    try:
        import main as cli
    finally:
        sys.path.remove(str(REPO))
    return cli


def _resume_folder(tmp, name, config, checkpoint=b""):
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(config)
    (d / "checkpoint.pt").write_bytes(checkpoint)
    return ["--resume", d]


def _corrupt_checkpoint(tmp):
    """A genuine config.json (as main.py writes it) next to a checkpoint.pt that is garbage."""
    args = vars(import_main().parse_args([str(a) for a in BASE] + io_args(tmp / "results")))
    args.pop("list_presets", None)
    cfg = dict(args=args, seed=args["seed"], command="main.py")
    return _resume_folder(tmp, "damaged", json.dumps(cfg), b"this is not a torch checkpoint\n")


def _file(tmp, name="a_file"):
    f = tmp / name
    f.write_text("not a directory\n")
    return f


def _not_a_result_folder(tmp):
    d = tmp / "some_folder"
    d.mkdir()
    (d / "notes.txt").write_text("hello\n")
    return ["--resume", d]


# id -> (function of a scratch dir returning the argv, regex the one-line message must match)
BAD = {
    "lr_tab-length": (lambda t: BASE + ["--lr_tab", 0.1], r"lr_tab"),
    "too-few-sizes": (lambda t: BASE + ["--size_tab", 10, 784], r"size_tab"),
    "toy-sizes": (lambda t: ["--toymodel", "--size_tab", 10, 5, "--action", "plotcurves", "--quiet"], r"size_tab"),
    "T-0": (lambda t: BASE + ["--T", 0], r"--T"),
    "Kmax-0": (lambda t: BASE + ["--Kmax", 0], r"Kmax"),
    "Kmax-above-T": (lambda t: BASE + ["--Kmax", 50, "--T", 10], r"Kmax"),
    "beta-0": (lambda t: BASE + ["--beta", 0], r"beta"),
    "beta-negative": (lambda t: BASE + ["--beta", -1], r"beta"),
    "unknown-activation": (lambda t: BASE + ["--activation-function", "relu"], r"activation"),
    "unknown-action": (lambda t: BASE + ["--action", "dance"], r"action"),
    "unknown-method": (lambda t: BASE + ["--training-method", "sgd"], r"training.method"),
    "unknown-preset": (lambda t: BASE + ["--preset", "P-9h"], r"preset"),
    "unknown-flag": (lambda t: BASE + ["--learning-rate", 0.1], r"learning-rate|unrecognized"),
    "T-not-an-integer": (lambda t: BASE + ["--T", "ten"], r"--T"),
    "conv-shrinks": (lambda t: BASE + ["--C_tab", 64, 32, 1, "--Fconv", 13, "--size_tab", 10,
                                       "--lr_tab", 0.1, 0.1, 0.1], r"C_tab|Fconv|Fpool|geometry|shrink"),
    "conv-channels-not-ending-in-1": (lambda t: BASE + ["--C_tab", 64, 32, "--size_tab", 10], r"C_tab"),
    "data-dir-is-a-file": (lambda t: BASE + ["--data-dir", _file(t)], r"data.dir"),
    "results-dir-under-a-file": (lambda t: BASE + ["--results-dir", _file(t) / "sub"], r"results.dir"),
    "resume-not-a-result-folder": (lambda t: BASE + _not_a_result_folder(t), r"resume"),
    "resume-corrupt-config": (lambda t: BASE + _corrupt_config(t), r"resume|config"),
    "resume-foreign-config": (lambda t: BASE + _foreign_config(t), r"resume|config"),
    "resume-config-not-an-object": (lambda t: BASE + _resume_folder(t, "list", "[]\n"), r"resume|config"),
    "resume-plotcurves-folder": (lambda t: BASE + _resume_folder(t, "curves", '{"args": {"action": "plotcurves"}}'),
                                 r"resume|train"),
    "resume-corrupt-checkpoint": (lambda t: BASE + _corrupt_checkpoint(t), r"resume|checkpoint"),
    "device-label-0": (lambda t: BASE + ["--device-label", 0], r"device.label|CUDA"),
    "toymodel-train": (lambda t: TOY + ["--action", "train"], r"toymodel|train"),
    # every value checked before any work
    "lr-negative": (lambda t: BASE + ["--lr_tab", -0.1, 0.05], r"lr_tab"),
    "lr-nan": (lambda t: BASE + ["--lr_tab", "nan", 0.05], r"lr_tab"),
    "lr-inf": (lambda t: BASE + ["--lr_tab", 0.1, "inf"], r"lr_tab"),
    "beta-inf": (lambda t: BASE + ["--beta", "inf"], r"beta"),
    "beta-nan": (lambda t: BASE + ["--beta", "nan"], r"beta"),
    "dt-inf": (lambda t: BASE + ["--dt", "inf"], r"dt"),
    "dt-beta-diverge": (lambda t: BASE + ["--discrete", "--beta", 1.5], r"dt.*beta|diverge"),
    "dt-too-large": (lambda t: BASE + ["--dt", 2.5, "--beta", 0.1], r"dt"),
    "batch-above-train-subset": (lambda t: BASE + ["--batch-size", 100000], r"batch-size.*20"),
    "test-batch-above-test-subset": (lambda t: BASE + ["--test-batch-size", 50], r"test-batch-size.*20"),
    "batch-above-mnist": (lambda t: BASE[:-7] + ["--quiet", "--batch-size", 70000], r"batch-size.*60000"),
    "prefix-epoch": (lambda t: BASE + ["--epoch", 2], r"--epoch.*did you mean --epochs"),
    "seed-negative": (lambda t: BASE + ["--seed", -1], r"seed"),
    "device-label-minus-2": (lambda t: BASE + ["--device-label", -2], r"device.label"),
    "padding-negative": (lambda t: BASE + ["--padding", -1], r"padding"),
    "threads-0": (lambda t: BASE + ["--threads", 0], r"threads"),
}


NEEDS_MNIST = {"resume-corrupt-checkpoint"}  # its data is loaded before the checkpoint


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """All bad-input commands, run concurrently once (each costs a torch import)."""
    cases = {}
    for cid, (make, _) in BAD.items():
        if cid in NEEDS_MNIST and not HAVE_MNIST:
            continue  # never let a test download into the repository's data folder
        scratch = tmp_path_factory.mktemp(cid)
        results = scratch / "results"
        argv = io_args(results) + [str(a) for a in make(scratch)]
        cases[cid] = dict(scratch=scratch, results=results, argv=argv, before=snapshot(scratch))
    procs = run_many([c["argv"] for c in cases.values()])
    for c, p in zip(cases.values(), procs):
        c["proc"], c["after"] = p, snapshot(c["scratch"])
    return cases


@pytest.mark.parametrize("cid", [pytest.param(c, marks=pytest.mark.mnist) if c in NEEDS_MNIST else c for c in BAD])
def test_bad_input_exits_2_with_one_line(cid, bad_runs):
    if cid in NEEDS_MNIST:
        assert HAVE_MNIST, f"MNIST files missing in {RAW} (run `make data`)"
    if cid == "device-label-0":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: --device-label 0 is valid here")
    c, pattern = bad_runs[cid], BAD[cid][1]
    p = c["proc"]
    cmd = "python main.py " + " ".join(c["argv"])
    assert "Traceback" not in p.stderr + p.stdout, f"{cmd}\n{p.stderr}"
    assert p.returncode == 2, f"{cmd}\nexit {p.returncode}\nstderr:\n{p.stderr}"
    lines = p.stderr.splitlines()
    assert len(lines) == 1, f"{cmd}\nstderr has {len(lines)} lines:\n{p.stderr}"
    assert re.search(pattern, lines[0]), f"{cmd}\nmessage does not name {pattern!r}: {lines[0]}"
    assert not c["results"].exists(), f"{cmd}\nwrote {sorted(snapshot(c['results']))}"
    changed = sorted(k for k in set(c["after"]) | set(c["before"]) if c["after"].get(k, 0) != c["before"].get(k, 0))
    assert not changed, f"{cmd}\nadded, removed or rewritten: {changed}"


# ------------------------------------------------------------------------------------------------
# 4: resume

KILL = ["--preset", "P-1h", "--epochs", 3, "--train-subset", 1500, "--test-subset", 300, "--seed", 3, "--quiet"]


def _read_results(results_dir):
    for f in Path(results_dir).glob("ep_disc_1hidden/cpu-*/Trial-*/results.json"):
        try:
            return f.parent, json.loads(f.read_text())
        except (OSError, ValueError):
            return None
    return None


def kill_after_epoch(argv, results_dir, epoch, log, alongside=()):
    """Start `main.py argv`, SIGKILL it as soon as results_dir's results.json says `epoch` epochs
    are done; the commands in `alongside` run meanwhile and must succeed.  Returns (trial folder,
    results.json at the kill)."""
    procs = []
    try:
        with open(log, "w") as out:
            for other in alongside:
                procs.append(subprocess.Popen(main_cmd(*other), cwd=REPO, env=ENV, stdout=out,
                                              stderr=subprocess.STDOUT))
            victim = subprocess.Popen(main_cmd(*argv), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            procs.append(victim)
            deadline = time.monotonic() + TIMEOUT
            while True:
                assert victim.poll() is None, \
                    f"run ended (exit {victim.returncode}) before it could be killed after epoch {epoch}"
                got = _read_results(results_dir)
                if got and got[1].get("epochs_done", 0) >= epoch:
                    break
                assert time.monotonic() < deadline, f"epoch {epoch} did not finish in time"
                time.sleep(0.02)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(60) == -signal.SIGKILL
            for p in procs[:-1]:
                assert p.wait(TIMEOUT) == 0, Path(log).read_text()
    finally:
        for p in procs:  # only on failure: never leave a run behind
            if p.poll() is None:
                p.kill()
                p.wait()
    return _read_results(results_dir)


@pytest.mark.mnist
@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path, mnist_present):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    trial, partial = kill_after_epoch(KILL + io_args(kill_dir), kill_dir, 1, tmp_path / "ref.log",
                                      alongside=[KILL + io_args(ref_dir)])
    assert 1 <= partial["epochs_done"] < 3, partial
    assert (trial / "checkpoint.pt").is_file()

    ok(run_main("--resume", trial, "--quiet"))
    assert train_trials(kill_dir) == [trial], "resume must continue in the same folder"
    resumed = load(trial / "results.json")
    full = load(only_trial(ref_dir) / "results.json")
    assert resumed["epochs_done"] == full["epochs_done"] == 3
    assert len(resumed["error_test_tab"]) == 3
    assert strip_timing(resumed) == strip_timing(full)
    assert not tmp_leftovers(kill_dir)


@pytest.mark.mnist
@pytest.mark.slow
def test_interrupted_extension_keeps_its_target(tmp_path, mnist_present):
    """`--resume F --epochs 3` killed after epoch 2, then `--resume F`: the run goes on to epoch 3
    (the extended target is not lost)."""
    results = tmp_path / "results"
    cmd = ["--preset", "P-1h", "--train-subset", 1000, "--test-subset", 100, "--seed", 6, "--quiet"]
    ok(run_main(*cmd, "--epochs", 1, *io_args(results)))
    trial = only_trial(results)
    _, partial = kill_after_epoch(["--resume", trial, "--epochs", 3, "--quiet"], results, 2, tmp_path / "log")
    assert partial["epochs_done"] == 2, partial
    ok(run_main("--resume", trial, "--quiet"))
    res = load(trial / "results.json")
    assert res["epochs_done"] == 3, \
        f"after the second --resume: {res['epochs_done']} epochs done, the extension asked for 3"


@pytest.mark.mnist
@pytest.mark.slow
def test_resume_with_more_epochs_equals_uninterrupted(tmp_path, mnist_present):
    cmd = ["--preset", "P-1h", "--train-subset", 600, "--test-subset", 200, "--seed", 4, "--quiet"]
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    for p in run_many([cmd + ["--epochs", 1] + io_args(a_dir), cmd + ["--epochs", 2] + io_args(b_dir)]):
        ok(p)
    trial = only_trial(a_dir)
    assert load(trial / "results.json")["epochs_done"] == 1
    ok(run_main("--resume", trial, "--epochs", 2, "--quiet"))
    assert train_trials(a_dir) == [trial]
    a, b = load(trial / "results.json"), load(only_trial(b_dir) / "results.json")
    assert a["epochs_done"] == 2 and len(a["error_test_tab"]) == 2
    assert strip_timing(a) == strip_timing(b)


# ------------------------------------------------------------------------------------------------
# 5: trial numbering

TINY = ["--discrete", "--size_tab", 10, 8, 784, "--lr_tab", 0.1, 0.05, "--T", 3, "--Kmax", 2, "--epochs", 1,
        "--train-subset", 20, "--test-subset", 20, "--seed", 1, "--quiet"]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, mnist_present):
    """Trial-1 ... Trial-9 (and unrelated entries) exist; two tiny trains follow, one with
    --training-method EP, one with its original spelling eqprop."""
    results = tmp_path_factory.mktemp("numbering") / "results"
    parent = results / "ep_disc_1hidden" / f"cpu-{datetime.date.today().isoformat()}"
    parent.mkdir(parents=True)
    for k in range(1, 10):
        (parent / f"Trial-{k}").mkdir()
    (parent / "notes.txt").write_text("unrelated\n")
    (parent / "Trial-x").mkdir()  # not a trial number
    procs = {}
    for method in ("EP", "eqprop"):
        procs[method] = run_main(*TINY, "--training-method", method, *io_args(results))
        procs[method, "after"] = sorted(os.listdir(parent))
    return dict(parent=parent, procs=procs)


@pytest.mark.mnist
def test_trial_numbering_past_nine(numbered):
    parent, procs = numbered["parent"], numbered["procs"]
    ok(procs["EP"])
    assert (parent / "Trial-10" / "results.json").is_file(), procs["EP", "after"]
    ok(procs["eqprop"])
    assert (parent / "Trial-11" / "results.json").is_file(), procs["eqprop", "after"]
    assert not (parent / "Trial-2" / "results.json").exists()  # existing folders are never reused
    assert (parent / "notes.txt").read_text() == "unrelated\n"


@pytest.mark.mnist
@pytest.mark.parametrize("method", ["EP", "eqprop"])
def test_training_method_ep_spellings(method, numbered):
    ok(numbered["procs"][method])
    trial = numbered["parent"] / ("Trial-10" if method == "EP" else "Trial-11")
    res = load(trial / "results.json")
    assert res["method"] == "EP" and res["epochs_done"] == 1 and len(res["error_test_tab"]) == 1
    assert load(trial / "config.json")["args"]["training_method"] == "EP"


# ------------------------------------------------------------------------------------------------
# 6: presets

def test_list_presets_names_every_preset():
    p = ok(run_main("--list-presets", timeout=120))
    names = [ln.split()[0] for ln in p.stdout.splitlines() if ln.strip()]
    missing = [n for n in PRESET_NAMES if n not in names]
    assert not missing, f"--list-presets lacks {missing}:\n{p.stdout}"
    assert not p.stderr


def test_list_presets_shows_valid_flags():
    """The flags printed for a preset are real flags, with the preset's values: copying them gives
    the same configuration as --preset NAME."""
    p = ok(run_main("--list-presets", timeout=120))
    cli = import_main()
    for line in p.stdout.splitlines():
        if not line.strip():
            continue
        name = line.split()[0]
        flags = line[line.index(" --"):].split()
        try:
            listed = vars(cli.parse_args(flags))
        except cli.UsageError as e:
            pytest.fail(f"preset {name}: listed flags do not parse ({e}): {' '.join(flags)}")
        preset = vars(cli.parse_args(["--preset", name]))
        for k in ("preset", "explicit"):
            listed.pop(k), preset.pop(k)
        assert listed == preset, name


@pytest.mark.mnist
def test_explicit_flags_override_the_preset(tmp_path, mnist_present):
    results = tmp_path / "results"
    ok(run_main("--preset", "P-1h", "--T", 7, "--Kmax", 4, "--epochs", 1, "--train-subset", 40,
                "--test-subset", 40, "--seed", 1, "--quiet", *io_args(results)))
    trial = only_trial(results)
    lines = (trial / "hyperparameters.txt").read_text().splitlines()
    assert "- T: 7" in lines and "- Kmax: 4" in lines, lines
    assert "- T: 40" not in lines
    # the rest still comes from the preset
    assert "- layer sizes: [10, 512, 784]" in lines, lines
    args = load(trial / "config.json")["args"]
    assert args["T"] == 7 and args["Kmax"] == 4
    assert args["beta"] == 0.1 and args["lr_tab"] == [0.04, 0.08] and args["discrete"] is True
    assert args["benchmark"] is True


# ------------------------------------------------------------------------------------------------
# 7: plotcurves and receipe for each network

GDU = {
    "toy": (["--toymodel", "--no-clamp", "--batch-size", 1, "--size_tab", 10, 50, 5, "--activation-function",
             "tanh", "--dt", 0.08, "--beta", 0.01, "--T", 300, "--Kmax", 10],
            "ep_cont_toymodel", 2, 3),
    "EPcont": (["--no-clamp", "--size_tab", 10, 32, 784, "--activation-function", "tanh", "--dt", 0.08,
                "--beta", 0.01, "--T", 400, "--Kmax", 8, "--batch-size", 4, "--train-subset", 200],
               "ep_cont_1hidden", 2, 2),
    "EPdisc": (["--discrete", "--size_tab", 10, 32, 784, "--activation-function", "tanh", "--beta", 0.01,
                "--T", 100, "--Kmax", 8, "--batch-size", 4, "--train-subset", 200],
               "ep_disc_1hidden", 2, 2),
    "convEP": (["--size_tab", 10, "--C_tab", 8, 4, 1, "--activation-function", "hardsigm", "--beta", 0.02,
                "--T", 30, "--Kmax", 5, "--batch-size", 2, "--train-subset", 200],
               "ep_conv", 3, 3),
}


def _kmax(argv):
    return int(argv[argv.index("--Kmax") + 1])


@pytest.fixture(scope="module")
def gdu_runs(tmp_path_factory, mnist_present):
    root = tmp_path_factory.mktemp("gdu")
    keys = [(kind, action) for kind in GDU for action in ("plotcurves", "receipe")]
    argvs = [GDU[kind][0] + ["--action", action, "--seed", 1, "--quiet"] + (["--trials", 2] if action == "receipe" else [])
             + io_args(root / kind / action) for kind, action in keys]
    procs = run_many(argvs)
    return {k: (root / k[0] / k[1], p) for k, p in zip(keys, procs)}


def _gdu_folder(gdu_runs, kind, action):
    """The run exited 0, wrote its Trial-1 folder and left no temporary file."""
    results_dir, p = gdu_runs[(kind, action)]
    ok(p)
    folder = results_dir / GDU[kind][1] / "Trial-1"
    assert folder.is_dir(), sorted(snapshot(results_dir))
    assert not tmp_leftovers(results_dir)
    return folder


# Measured with these settings and --seed 1 (torch 2.14, CPU): (max RMSE, min cos_total) per group
# toy 0.003 / 1.000 everywhere; EPcont 0.081 / 0.999; EPdisc 0.098 / 0.998; convEP synapses
# 0.039 / 1.000, neurons 0.52 / 0.73 (the conv layers' neurons lag in the prototypical conv net).
GDU_FLOORS = {
    "toy": {"neurons": (0.02, 0.99), "synapses": (0.02, 0.99)},
    "EPcont": {"neurons": (0.25, 0.95), "synapses": (0.25, 0.95)},
    "EPdisc": {"neurons": (0.3, 0.95), "synapses": (0.3, 0.95)},
    "convEP": {"neurons": (1.0, 0.5), "synapses": (0.15, 0.95)},
}
# receipe, same sign (total) averaged over the 2 trials, per layer: toy 100 %; EPcont 99.8 / 99.7 %;
# EPdisc 99.7 / 99.7 %; convEP 95.7 / 91.6 / 87.0 %
RECEIPE_FLOOR = {"toy": 99.0, "EPcont": 95.0, "EPdisc": 95.0, "convEP": 80.0}


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(GDU))
def test_plotcurves(kind, gdu_runs):
    argv, name, n_neurons, n_synapses = GDU[kind]
    folder = _gdu_folder(gdu_runs, kind, "plotcurves")
    res = load(folder / "results.json")
    assert res["action"] == "plotcurves"
    nn, ns = res["neuron_names"], res["synapse_names"]
    assert len(nn) == n_neurons and len(ns) == n_synapses, (nn, ns)
    m = res["metrics"]
    assert set(m["neurons"]) == set(nn) and set(m["synapses"]) == set(ns), m
    for group in ("neurons", "synapses"):
        for layer, vals in m[group].items():
            assert {"rmse", "cos_total", "cos_steps", "sign_agree"} <= set(vals), (layer, vals)
            assert all(np.isfinite(v) for v in vals.values()), (layer, vals)
    K = _kmax(argv)
    with np.load(folder / "curves.npz", allow_pickle=False) as z:
        keys = set(z.files)
        want = ({f"nS_{i}" for i in range(len(nn))} | {f"dS_{i}" for i in range(len(nn))}
                | {f"NT_{i}" for i in range(len(ns))} | {f"DT_{i}" for i in range(len(ns))})
        assert keys == want, keys
        for i in range(len(nn)):
            assert z[f"nS_{i}"].shape[0] == K and z[f"nS_{i}"].shape == z[f"dS_{i}"].shape
        for i in range(len(ns)):
            assert z[f"NT_{i}"].shape[0] == K and z[f"NT_{i}"].shape == z[f"DT_{i}"].shape
        for k in z.files:
            assert np.isfinite(z[k]).all(), k
    for png in ("S.png", "T.png", "hist.png"):
        decodable_png(folder / png)
    # EP's updates match BPTT's gradients: quality floors per group, (max RMSE, min cos_total)
    for group, (rmse_max, cos_min) in GDU_FLOORS[kind].items():
        worst = {k: (v["rmse"], v["cos_total"]) for k, v in m[group].items()}
        assert all(r < rmse_max and c > cos_min for r, c in worst.values()), (group, worst)


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(GDU))
def test_receipe(kind, gdu_runs):
    _, name, _, n_synapses = GDU[kind]
    folder = _gdu_folder(gdu_runs, kind, "receipe")
    rec = load(folder / "results.json")
    names = rec["layer_names"]
    assert len(names) == n_synapses and rec["trials"] == 2
    for stat in ("mean", "std"):
        vals = rec[stat]["same_sign_total"]
        assert len(vals) == len(names), (stat, vals)
        assert all(0 <= v <= 100 for v in vals), (stat, vals)
    assert min(rec["mean"]["same_sign_total"]) > RECEIPE_FLOOR[kind], rec["mean"]["same_sign_total"]
    decodable_png(folder / "receipe.png")


@pytest.mark.mnist
def test_divergence_stops_with_one_line_and_keeps_finished_epochs(tmp_path, mnist_present):
    """A NaN state stops the run: exit 3, one line naming epoch, batch and method; the finished
    (epoch, method) results stay in results.json."""
    rd = tmp_path / "res"
    proc = run_main("--size_tab", "10", "64", "784", "--lr_tab", "1e3", "1e3", "--no-clamp",
                    "--activation-function", "tanh", "--dt", "0.5", "--T", "20", "--Kmax", "5", "--beta", "0.5",
                    "--train-subset", "500", "--test-subset", "100", "--seed", "1", "--epochs", "2",
                    "--benchmark", "--quiet", *io_args(rd))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "epoch 1" in lines[0] and "batch" in lines[0] and "BPTT" in lines[0]
    res = load(only_trial(rd, "ep_cont_1hidden") / "results.json")
    assert res["diverged"] == lines[0].split("main.py: ")[1]
    assert len(res["error_test_tab"]) == 1 and res["error_test_bptt_tab"] == []
