"""Tests of the Table-1 sweep runner (reproduce.py): a local sweep end to end, a killed sweep
resumed to the same table, a preempted submitit job (submitit's LocalExecutor: real subprocess
jobs) resumed through main.py --resume, the aggregation against hand-computed numbers, bad input.

Runs are tiny (2 000 training images, T 8, K 3) and pinned to one thread per run (--threads-per-run
1, OMP_NUM_THREADS=1), so that runs made with different --workers give the same numbers.  As in
test_cli.py, the real MNIST is read from <repo>/data (`make data`), and those tests are marked
`mnist` (in CI a skip of one of them is a failure).
"""
import json
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import DATA, ENV, HAVE_MNIST, RAW, REPO, load, ok  # noqa: E402  (one set of CLI test helpers)

TIMEOUT = 300

TINY = ["--epochs", 2, "--train-subset", 2000, "--test-subset", 100, "--T", 8, "--Kmax", 3]
SWEEP = ["--presets", "P-1h", "EB-1h", "--seeds", 1, 2, *TINY]
RUNS = [(p, s) for p in ("P-1h", "EB-1h") for s in (1, 2)]


def import_reproduce():
    sys.path.insert(0, str(REPO))
    try:
        import reproduce
    finally:
        sys.path.remove(str(REPO))
    return reproduce


rp = import_reproduce()


# ------------------------------------------------------------------------------------------------
# helpers

def cmd(*args):
    return [sys.executable, str(REPO / "reproduce.py"), *map(str, args)]


def io_args(results_dir, *more):
    return ["--results-dir", results_dir, "--data-dir", DATA, "--threads-per-run", 1, *more]


def run_repro(*args, cwd=None, env=ENV, timeout=TIMEOUT):
    return subprocess.run(cmd(*args), cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_dirs(results_dir, preset, seed):
    return sorted(Path(results_dir).glob(f"runs/{preset}__*/seed-{seed}"))


def only_trial(results_dir, preset, seed):
    dirs = run_dirs(results_dir, preset, seed)
    assert len(dirs) == 1, dirs
    trials = sorted(dirs[0].glob("*/*/Trial-*"))
    assert len(trials) == 1, f"expected one Trial folder, found {trials}"
    return trials[0]


def epochs_saved(results_dir):
    """{(preset, seed): epochs_done} from the runs' results.json (absent: no epoch saved yet)."""
    out = {}
    for f in Path(results_dir).glob("runs/*/seed-*/*/*/Trial-*/results.json"):
        run = f.parents[3]
        try:
            out[(run.parent.name.split("__")[0], int(run.name[5:]))] = json.loads(f.read_text())["epochs_done"]
        except (OSError, ValueError, KeyError):
            pass
    return out


def strip_timing(obj):
    """A results.json or table1.json without its durations."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items()
                if not k.startswith("seconds") and k != "elapsed_time"}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def pids_mentioning(text):
    """Processes whose command line mentions `text` (a tmp folder of one test)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text.encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def wait_until(cond, what, timeout=TIMEOUT, step=0.01):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return got


def tmp_leftovers(root):
    return [p for p in Path(root).rglob("*") if p.name.endswith(".tmp")]


def snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


def decodable_png(path):
    from matplotlib.image import imread
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape
    return img


@pytest.fixture(scope="module")
def mnist_present():
    assert HAVE_MNIST, f"MNIST files missing in {RAW} (run `make data`)"


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory, mnist_present):
    """The uninterrupted reference: 2 presets x 2 seeds x 2 epochs, 2 at once, started from a
    directory that is not the repository."""
    root = tmp_path_factory.mktemp("sweep")
    results = root / "table"
    proc = run_repro(*SWEEP, *io_args(results), "--workers", 2, cwd=root)
    return dict(dir=results, proc=proc, table=load(results / "table1.json") if proc.returncode == 0 else None)


# ------------------------------------------------------------------------------------------------
# a local sweep end to end

@pytest.mark.mnist
@pytest.mark.slow
def test_local_sweep_end_to_end(full_sweep):
    proc, results = ok(full_sweep["proc"]), full_sweep["dir"]
    # one main.py run per (preset, seed), each finished, in its own folder
    for preset, seed in RUNS:
        res = load(only_trial(results, preset, seed) / "results.json")
        assert res["epochs_done"] == 2 and res["seed"] == seed
        assert len(res["error_test_tab"]) == len(res["error_test_bptt_tab"]) == 2
        # a progress line per finished epoch and method, prefixed with the run's id
        for epoch in (1, 2):
            for method in ("EP", "BPTT"):
                assert re.search(rf"^\[{preset} seed {seed}\] epoch {epoch}/2 {method}: train error .*test error",
                                 proc.stdout, re.M), (preset, seed, epoch, method, proc.stdout)
    assert load(results / "sweep.json")["flags"] == ["--Kmax", "3", "--T", "8", "--epochs", "2",
                                                     "--test-subset", "100", "--train-subset", "2000"]

    rows = full_sweep["table"]["rows"]
    assert [(r["preset"], r["method"]) for r in rows] == [("EB-1h", "EP"), ("EB-1h", "BPTT"), ("P-1h", "EP"),
                                                         ("P-1h", "BPTT")]
    for r in rows:
        sfx = "" if r["method"] == "EP" else "_bptt"
        per_seed = [load(only_trial(results, r["preset"], s) / "results.json") for s in (1, 2)]
        finals = [res[f"error_test{sfx}_tab"][-1] for res in per_seed]
        trains = [res[f"error_train{sfx}_tab"][-1] for res in per_seed]
        assert r["seeds"] == [1, 2] and r["n_seeds"] == 2 and r["epochs_done"] == [2, 2] and r["complete"]
        assert r["final_test_error_mean"] == pytest.approx(statistics.mean(finals))
        assert r["final_test_error_std"] == pytest.approx(statistics.stdev(finals))
        assert r["final_train_error_mean"] == pytest.approx(statistics.mean(trains))
        assert r["final_train_error_std"] == pytest.approx(statistics.stdev(trains))
        assert r["best_test_error_mean"] == pytest.approx(
            statistics.mean(min(res[f"error_test{sfx}_tab"]) for res in per_seed))
        assert r["seconds_per_epoch_mean"] > 0
    paper = {(r["preset"], r["method"]): (r["paper_test_error_mean"], r["paper_test_error_std"]) for r in rows}
    assert paper == {("EB-1h", "EP"): (2.06, 0.17), ("EB-1h", "BPTT"): (2.11, 0.09),
                     ("P-1h", "EP"): (2.00, 0.13), ("P-1h", "BPTT"): (2.00, 0.12)}
    # P-1h learns even in 2 tiny epochs (measured: EP 16 %, BPTT 14 %; chance 90 %)
    assert all(r["final_test_error_mean"] < 50 for r in rows if r["preset"] == "P-1h"), rows

    md = (results / "table1.md").read_text()
    assert re.search(r"^\| P-1h \| `--Kmax 3 .*` \| EP \| 2 \| 2/2 \| \d+\.\d\d ± \d+\.\d\d \|.*\| 2\.00 ± 0\.13 \|",
                     md, re.M), md
    decodable_png(results / "table1.png")
    assert not tmp_leftovers(results)


@pytest.mark.mnist
@pytest.mark.slow
def test_rerun_skips_finished_runs_and_table_only_reads_them(full_sweep):
    results = full_sweep["dir"]
    ok(full_sweep["proc"])
    trials = {run: only_trial(results, *run) for run in RUNS}
    stamps = {run: (t / "results.json").stat().st_mtime_ns for run, t in trials.items()}
    proc = ok(run_repro(*SWEEP, *io_args(results), "--workers", 2))
    assert "epoch 1/2" not in proc.stdout, proc.stdout
    for preset, seed in RUNS:
        assert f"[{preset} seed {seed}] done: already done (2/2 epochs)" in proc.stdout, proc.stdout
        assert only_trial(results, preset, seed) == trials[(preset, seed)]
        assert (trials[(preset, seed)] / "results.json").stat().st_mtime_ns == stamps[(preset, seed)]
    assert load(results / "table1.json") == full_sweep["table"]

    (results / "table1.json").unlink()
    proc = ok(run_repro("--table-only", "--results-dir", results))
    assert load(results / "table1.json") == full_sweep["table"]
    assert "| P-1h |" in proc.stdout


# ------------------------------------------------------------------------------------------------
# kill and resume

@pytest.mark.mnist
@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_table(full_sweep, tmp_path):
    """One run at a time: SIGKILL the runner after the first epoch line, once seed 1 has saved
    epoch 1 of 2 (seed 2 has not started).  The same command again resumes seed 1, starts seed 2
    and gives the P-1h rows of the uninterrupted sweep."""
    results = tmp_path / "killed"
    sweep = ["--presets", "P-1h", "--seeds", 1, 2, *TINY, *io_args(results)]
    log = tmp_path / "runner.log"
    with open(log, "w") as out:
        runner = subprocess.Popen(cmd(*sweep, "--workers", 1), cwd=REPO, env=ENV, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "] epoch 1/2" in log.read_text() and epochs_saved(results).get(("P-1h", 1)) == 1,
                       "seed 1 to save its first epoch")
            runner.send_signal(signal.SIGKILL)
            assert runner.wait(60) == -signal.SIGKILL
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    # its main.py child dies with it (no orphan may race the next sitting)
    wait_until(lambda: not pids_mentioning(str(results)), "the killed runner's child to exit", timeout=30)
    assert epochs_saved(results) == {("P-1h", 1): 1}, "the kill was meant to land in seed 1's second epoch"
    assert (only_trial(results, "P-1h", 1) / "checkpoint.pt").is_file()

    proc = ok(run_repro(*sweep, "--workers", 2))
    assert "[P-1h seed 1] resume from epoch 1/2" in proc.stdout, proc.stdout
    assert "[P-1h seed 2] start" in proc.stdout, proc.stdout
    for seed in (1, 2):
        res = load(only_trial(results, "P-1h", seed) / "results.json")
        assert res["epochs_done"] == 2
        assert strip_timing(res) == strip_timing(load(only_trial(full_sweep["dir"], "P-1h", seed) / "results.json"))
    uninterrupted = [r for r in full_sweep["table"]["rows"] if r["preset"] == "P-1h"]
    assert len(uninterrupted) == 2
    assert strip_timing(load(results / "table1.json")["rows"]) == strip_timing(uninterrupted)
    assert not tmp_leftovers(results)


@pytest.mark.mnist
@pytest.mark.slow
def test_a_trial_without_checkpoint_is_discarded_not_resumed(tmp_path, mnist_present):
    """A run killed before its first epoch ended leaves a Trial with config.json but no
    checkpoint: the next sitting removes it and starts afresh (an old date in the folder name does
    not matter)."""
    results = tmp_path / "t"
    extra = ["--epochs", "1", "--train-subset", "200", "--test-subset", "100", "--T", "8", "--Kmax", "3"]
    flags = rp.canonical(rp.group_flags(extra))
    stale = rp.run_folder(results, "P-1h", 3, flags) / "ep_disc_1hidden" / "cpu-2020-01-01" / "Trial-1"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text(json.dumps({"args": {"epochs": 1}}))
    (stale / "hyperparameters.txt").write_text("stale\n")
    proc = ok(run_repro("--presets", "P-1h", "--seeds", 3, *extra, *io_args(results)))
    assert f"discarded {stale}" in proc.stdout, proc.stdout
    assert not stale.exists()
    trial = only_trial(results, "P-1h", 3)
    assert load(trial / "results.json")["epochs_done"] == 1
    assert (trial / "checkpoint.pt").is_file()
    assert load(results / "table1.json")["rows"][0]["epochs_done"] == [1]


@pytest.mark.mnist
@pytest.mark.slow
def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path, mnist_present):
    """EB-1h unclamped with absurd rates diverges in batch 2 of epoch 1 (main.py exit 3, a
    results.json with "diverged" and no checkpoint): reported, in the table, not rerun."""
    results = tmp_path / "div"
    argv = ["--presets", "EB-1h", "P-1h", "--seeds", 1, "--epochs", 1, "--train-subset", 200, "--test-subset", 100,
            "--T", 8, "--Kmax", 3, "--no-clamp", "--activation-function", "tanh", "--lr_tab", "1e30", "1e30",
            *io_args(results), "--workers", 2]
    proc = ok(run_repro(*argv))
    assert re.search(r"^\[EB-1h seed 1\] DIVERGED: diverged: epoch 1, batch \d+, method EP", proc.stdout, re.M), proc.stdout
    assert "[P-1h seed 1] done" in proc.stdout  # the sweep went on
    assert "1 diverged" in proc.stdout
    rows = {(r["preset"], r["method"]): r for r in load(results / "table1.json")["rows"]}
    ep, bptt = rows[("EB-1h", "EP")], rows[("EB-1h", "BPTT")]
    assert ep["diverged"] == [1] and ep["epochs_done"] == [0] and ep["final_test_error_mean"] is None
    assert bptt["diverged"] == [] and bptt["stopped_by_divergence"] == [1]
    assert rows[("P-1h", "EP")]["diverged"] == [] and rows[("P-1h", "EP")]["epochs_done"] == [1]
    assert "diverged: seed 1" in (results / "table1.md").read_text()
    trial = only_trial(results, "EB-1h", 1)

    proc = ok(run_repro(*argv))
    assert "[EB-1h seed 1] DIVERGED: diverged in an earlier sitting, not rerun" in proc.stdout, proc.stdout
    assert only_trial(results, "EB-1h", 1) == trial


def test_runs_main_py_refuses_fail_the_sweep_and_leave_nothing(tmp_path):
    """Flags main.py's parser accepts but its validation refuses (K > T): every run fails, the
    runner exits 1 naming them, and no run folder is left, so a corrected command may use the dir."""
    results = tmp_path / "bad"
    proc = run_repro("--presets", "P-1h", "--seeds", 1, 2, "--T", 8, "--Kmax", 9, "--workers", 2, *io_args(results))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert re.search(r"P-1h seed 1 \(main.py refused the run: main.py: error: --Kmax must be <= --T", proc.stderr), \
        proc.stderr
    assert "P-1h seed 2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (results / "runs").exists()
    proc = run_repro("--presets", "P-1h", "--seeds", 1, "--T", 8, "--Kmax", 10, *io_args(results))
    assert proc.returncode == 1 and "main.py refused the run" in proc.stderr, proc.stderr  # not "another sweep"


# ------------------------------------------------------------------------------------------------
# submitit: the Slurm code path through submitit's LocalExecutor

def test_job_is_checkpointable_and_picklable():
    spec = rp.RunSpec("P-1h", 1, ("--epochs", "2"), Path("/x/runs/P-1h/seed-1"), ("--data-dir", "/d"))
    job = rp.RunJob()
    again = job.checkpoint(spec, 3)  # what submitit requeues on preemption / timeout
    assert again.function is job and again.args == (spec, 3) and again.kwargs == {}
    back = pickle.loads(pickle.dumps(again.function)), pickle.loads(pickle.dumps(spec))
    assert isinstance(back[0], rp.RunJob) and back[1] == spec
    assert type(job).__module__ == "reproduce"  # pickled by reference, importable in the job


@pytest.mark.mnist
@pytest.mark.slow
def test_submitit_local_job_preempted_after_an_epoch_resumes(full_sweep, tmp_path):
    results = tmp_path / "subm"
    log = tmp_path / "runner.log"
    args = ["--executor", "submitit-local", "--presets", "P-1h", "--seeds", 1, *TINY, *io_args(results)]
    with open(log, "w") as out:
        runner = subprocess.Popen(cmd(*args), cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: epochs_saved(results).get(("P-1h", 1)) == 1, "the job's first epoch")
            # the job process (python -m submitit.core._submit <results>/submitit-local/...)
            jobs = [p for p in pids_mentioning(str(results / "submitit-local"))
                    if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes()]
            assert len(jobs) == 1, jobs
            os.kill(jobs[0], signal.SIGUSR2)  # submitit's preemption signal
            assert runner.wait(TIMEOUT) == 0, log.read_text()
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    job_log = "".join(p.read_text() for p in results.glob("submitit-local/*/*_log.*"))
    assert "preempted" in job_log and "Requeued" in job_log, job_log
    assert "[P-1h seed 1] resume from epoch 1/2" in job_log, job_log
    trial = only_trial(results, "P-1h", 1)
    assert strip_timing(load(trial / "results.json")) == \
        strip_timing(load(only_trial(full_sweep["dir"], "P-1h", 1) / "results.json"))
    rows = load(results / "table1.json")["rows"]
    assert [(r["preset"], r["method"], r["epochs_done"]) for r in rows] == [("P-1h", "EP", [2]), ("P-1h", "BPTT", [2])]
    assert "job " in log.read_text() and "submitit-local" in log.read_text()


# ------------------------------------------------------------------------------------------------
# aggregation of hand-made result folders

def make_run(root, preset, seed, flags, results=None, args=None, model="ep_disc_2hidden"):
    """A run folder as the runner and main.py leave it (the checkpoint only has to exist)."""
    spec = rp.RunSpec(preset, seed, tuple(flags), rp.run_folder(root, preset, seed, tuple(flags)))
    rp.write_run_record(spec)
    if results is not None:
        trial = spec.folder / model / "cpu-2020-01-01" / "Trial-1"
        trial.mkdir(parents=True)
        (trial / "results.json").write_text(json.dumps(dict(action="train", method="EP", seed=seed, **results)))
        (trial / "config.json").write_text(json.dumps({"args": dict(args or {}, seed=seed)}))
        (trial / "checkpoint.pt").write_bytes(b"")


def tabs(test, train, secs, bptt=None):
    out = dict(epochs_done=len(test), error_test_tab=test, error_train_tab=train, seconds_tab=secs)
    if bptt:
        out.update(error_test_bptt_tab=bptt[0], error_train_bptt_tab=bptt[1], seconds_bptt_tab=bptt[2])
    return out


def test_aggregation_matches_hand_computed_numbers(tmp_path):
    root = tmp_path / "agg"
    # P-2h, 3 epochs: seeds 1, 2 finished, seed 3 at epoch 2, seed 4 has no epoch yet
    make_run(root, "P-2h", 1, [], tabs([5.0, 3.0, 2.0], [6, 4, 1.5], [10] * 3,
                                       ([5.5, 3.5, 2.5], [7, 5, 3.0], [20] * 3)), {"epochs": 3})
    make_run(root, "P-2h", 2, [], tabs([4.0, 2.5, 2.5], [5, 3, 2.0], [12] * 3,
                                       ([5.0, 3.0, 3.0], [6, 4, 2.0], [20] * 3)), {"epochs": 3})
    make_run(root, "P-2h", 3, [], tabs([4.5, 1.5], [5, 2.5], [14] * 2, ([6.0, 4.0], [6, 3.5], [20] * 2)),
             {"epochs": 3})
    make_run(root, "P-2h", 4, [])
    # P-1h-T30K10, one seed: BPTT diverged in epoch 2 (EP had finished it)
    res = tabs([3.0, 2.2], [3.5, 2.0], [1, 1], ([4.0], [4.5], [2]))
    res.update(epochs_done=1, diverged="diverged: epoch 2, batch 7, method BPTT (state is NaN/inf)")
    make_run(root, "P-1h-T30K10", 7, ["--epochs", "2"], res, {"epochs": 2}, model="ep_disc_1hidden")
    # P-1h, EP only, with the future --nudging flag recorded in config.json
    nud = ["--no-benchmark", "--nudging", "symmetric"]
    for seed, final in ((1, 2.1), (2, 2.3)):
        make_run(root, "P-1h", seed, nud, tabs([9.0, final], [8.0, 1.0], [3, 3]),
                 {"epochs": 2, "nudging": "symmetric", "benchmark": False}, model="ep_disc_1hidden")

    ok(run_repro("--table-only", "--results-dir", root))
    table = load(root / "table1.json")
    rows = {(r["preset"], r["method"]): r for r in table["rows"]}
    assert list(rows) == [("P-1h", "EP"), ("P-1h-T30K10", "EP"), ("P-1h-T30K10", "BPTT"), ("P-2h", "EP"),
                          ("P-2h", "BPTT")]

    ep = rows[("P-2h", "EP")]
    assert ep["seeds"] == [1, 2, 3] and ep["n_seeds"] == 3 and ep["flags"] == []
    assert ep["epochs_done"] == [3, 3, 2] and ep["epochs_target"] == 3 and ep["complete"] is False
    # finals 2.0, 2.5, 1.5: mean 2, sample std sqrt((0 + .25 + .25) / 2) = 0.5
    assert ep["final_test_error_mean"] == pytest.approx(2.0)
    assert ep["final_test_error_std"] == pytest.approx(0.5)
    # train finals 1.5, 2.0, 2.5
    assert ep["final_train_error_mean"] == pytest.approx(2.0)
    assert ep["final_train_error_std"] == pytest.approx(0.5)
    assert ep["best_test_error_mean"] == pytest.approx(2.0)
    assert ep["seconds_per_epoch_mean"] == pytest.approx(12.0)
    assert (ep["paper_test_error_mean"], ep["paper_test_error_std"]) == (1.95, 0.10)
    assert ep["test_error_curve_mean"] == pytest.approx([4.5, 7 / 3, 2.25])
    assert ep["diverged"] == []

    bp = rows[("P-2h", "BPTT")]
    # finals 2.5, 3.0, 4.0: mean 19/6, deviations -4/6, -1/6, 5/6 -> variance (42/36) / 2 = 7/12
    assert bp["final_test_error_mean"] == pytest.approx(19 / 6)
    assert bp["final_test_error_std"] == pytest.approx((7 / 12) ** 0.5)
    assert bp["best_test_error_mean"] == pytest.approx(19 / 6)
    assert (bp["paper_test_error_mean"], bp["paper_test_error_std"]) == (2.09, 0.12)
    assert bp["seconds_per_epoch_mean"] == pytest.approx(20.0)

    t_ep, t_bp = rows[("P-1h-T30K10", "EP")], rows[("P-1h-T30K10", "BPTT")]
    assert t_ep["n_seeds"] == 1 and t_ep["final_test_error_mean"] == 2.2 and t_ep["final_test_error_std"] is None
    assert t_ep["epochs_done"] == [2] and t_ep["diverged"] == [] and t_ep["flags"] == ["--epochs", "2"]
    assert t_bp["epochs_done"] == [1] and t_bp["diverged"] == [7] and t_bp["final_test_error_mean"] == 4.0
    assert t_ep["paper_row"] == "P-1h" and (t_ep["paper_test_error_mean"], t_bp["paper_test_error_mean"]) == (2.0, 2.0)

    nudged = rows[("P-1h", "EP")]
    assert nudged["nudging"] == "symmetric" and nudged["flags"] == nud
    assert nudged["final_test_error_mean"] == pytest.approx(2.2)
    assert nudged["final_test_error_std"] == pytest.approx(0.02 ** 0.5)
    assert table["pending"] == [{"preset": "P-2h", "flags": [], "seeds": [4]}]
    assert "ddof 1" in table["std"]

    md = (root / "table1.md").read_text()
    assert re.search(r"^\| P-2h \| – \| EP \| 3 \| 2–3/3 \| 2\.00 ± 0\.50 \| 2\.00 ± 0\.50 \| 2\.00 \| 1\.95 ± 0\.10 \| 12\.0 \|"
                     r" unfinished: seed 3 at 2 \|$", md, re.M), md
    assert re.search(r"^\| P-1h-T30K10 \| `--epochs 2` \| BPTT \| 1 \| 1/2 \| 4\.00 \|.*diverged: seed 7", md, re.M), md
    assert "nudging symmetric" in md and "P-2h (flags (none)), seeds [4]" in md
    assert t_ep["stopped_by_divergence"] == []  # EP had finished both epochs when BPTT diverged
    decodable_png(root / "table1.png")
    assert not tmp_leftovers(root)


def test_flag_sets_are_canonical():
    a = rp.canonical(rp.group_flags(["--train-subset", "200", "--epochs=1", "--lr_tab", "0.1", "-0.2"]))
    b = rp.canonical(rp.group_flags(["--epochs", "3", "--lr_tab", "0.1", "-0.2", "--epochs", "1",
                                     "--train-subset", "200"]))
    assert a == b == ("--epochs", "1", "--lr_tab", "0.1", "-0.2", "--train-subset", "200")
    assert rp.flags_tag(a) == rp.flags_tag(b) != rp.flags_tag(("--epochs", "2", "--train-subset", "200"))
    assert rp.run_folder("/r", "P-1h", 2, ()) == Path("/r/runs/P-1h/seed-2")
    known = {"--epochs", "--nudging", "--no-benchmark", "--data-dir", "--quiet", "--threads"}
    flags, runtime = rp.split_extra(["--nudging", "symmetric", "--data-dir", "d", "--no-benchmark", "--quiet",
                                     "--threads", "2"], known, Path("/home/u"))
    assert flags == ("--no-benchmark", "--nudging", "symmetric")
    assert runtime == ("--data-dir", "/home/u/d", "--threads", "2")


def test_help_documents_every_flag():
    proc = ok(run_repro("--help"))
    for action in rp.make_parser()._actions:
        assert action.help, action.option_strings
        for opt in action.option_strings:
            assert opt in proc.stdout, opt
    for word in ("--executor", "submitit-local", "(default: 1440)", "(default: results/table1)", "--resume"):
        assert word in proc.stdout, word


# ------------------------------------------------------------------------------------------------
# bad input: exit 2, one line on stderr, nothing written

BAD = {
    "unknown-preset": (["--presets", "P-9h", "--seeds", 1], r"P-9h"),
    "figure-preset": (["--presets", "fig2-toy", "--seeds", 1], r"fig2-toy.*not a train preset"),
    "empty-seed-list": (["--presets", "P-1h", "--seeds"], r"--seeds"),
    "no-seeds": (["--presets", "P-1h"], r"--seeds"),
    "duplicate-seeds": (["--presets", "P-1h", "--seeds", 1, 2, 1], r"--seeds: duplicate 1"),
    "duplicate-presets": (["--presets", "P-1h", "P-1h", "--seeds", 1], r"--presets: duplicate P-1h"),
    "negative-workers": (["--presets", "P-1h", "--seeds", 1, "--workers", -2], r"--workers must be >= 1"),
    "reserved-flag": (["--presets", "P-1h", "--seeds", 1, "--seed", 4], r"--seed cannot be passed"),
    "abbreviated-flag": (["--presets", "P-1h", "--seeds", 1, "--res", "x"], r"--res: neither"),
    "bad-main-value": (["--presets", "P-1h", "--seeds", 1, "--epochs", "two"], r"main.py refused.*epochs"),
    "table-only-empty": (["--table-only"], r"no runs"),
    "table-only-with-presets": (["--table-only", "--presets", "P-1h"], r"--table-only runs nothing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case, tmp_path):
    argv, pattern = BAD[case]
    results = tmp_path / "out"
    proc = run_repro(*argv, "--results-dir", results, cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce.py: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not results.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_slurm_without_sbatch_is_refused(tmp_path):
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if subprocess.run(["sh", "-c", "command -v sbatch"], env=dict(ENV, PATH=path), capture_output=True).returncode == 0:
        pytest.skip("this machine has Slurm")
    results = tmp_path / "out"
    proc = run_repro("--executor", "slurm", "--presets", "P-1h", "--seeds", 1, "--slurm-partition", "gpu",
                     "--results-dir", results, env=dict(ENV, PATH=path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(r"reproduce.py: error: .*sbatch", proc.stderr), proc.stderr
    assert not results.exists()


def test_slurm_submission_with_a_fake_sbatch(tmp_path):
    """--executor slurm against stand-ins for sbatch and srun: one array job with the requested
    resources, whose pickled calls are RunJob(spec, threads); nothing runs, the runner returns."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(ENV, PATH=os.pathsep.join([str(bin_dir), ENV["PATH"]]))
    results = tmp_path / "out"
    proc = ok(run_repro("--executor", "slurm", "--presets", "P-1h", "--seeds", 1, 2, "--epochs", 3,
                        "--slurm-partition", "gpu", "--slurm-time", 600, "--slurm-gpus", 1, "--slurm-cpus", 4,
                        "--slurm-mem", 32, "--device-label", 0, "--results-dir", results, env=env))
    assert "[P-1h seed 1] job 4242_0" in proc.stdout and "[P-1h seed 2] job 4242_1" in proc.stdout, proc.stdout
    assert f"--table-only --results-dir {results}" in proc.stdout
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=600", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32GB", "#SBATCH --array=0-1%2",
                 f"export PYTHONPATH={REPO}"):
        assert line in script, (line, script)
    calls = [pickle.loads((results / "slurm" / f"4242_{k}" / f"4242_{k}_submitted.pkl").read_bytes())
             for k in (0, 1)]
    for seed, call in zip((1, 2), calls):
        spec, threads = call.args
        assert type(call.function).__name__ == "RunJob" and threads == 4
        assert (spec.preset, spec.seed, spec.flags, spec.runtime) == ("P-1h", seed, ("--epochs", "3"),
                                                                      ("--device-label", "0"))
        assert spec.folder == results / "runs" / f"P-1h__{rp.flags_tag(spec.flags)}" / f"seed-{seed}"
        assert load(spec.folder / "run.json")["seed"] == seed
        assert not list(spec.folder.glob("*/*/Trial-*"))  # submitted, not run
    assert load(results / "sweep.json")["flags"] == ["--epochs", "3"]


@pytest.mark.mnist
@pytest.mark.slow
def test_a_results_dir_keeps_one_flag_set(full_sweep):
    results = full_sweep["dir"]
    ok(full_sweep["proc"])
    before = snapshot(results)
    proc = run_repro("--presets", "P-1h", "--seeds", 3, "--epochs", 1, *io_args(results))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "--Kmax 3 --T 8 --epochs 2 --test-subset 100 --train-subset 2000" in line \
        and "[--epochs 1]" in line, line
    assert snapshot(results) == before
    # the same flags in another order and spelling, another --data-dir spelling and --workers:
    # the same sweep
    proc = ok(run_repro("--presets", "P-1h", "EB-1h", "--seeds", 1, 2, "--Kmax", 3, "--T", 8, "--test-subset", 100,
                        "--train-subset", 2000, "--epochs=2", "--results-dir", results, "--data-dir", "data",
                        "--threads-per-run", 1, cwd=REPO))
    assert proc.stdout.count("already done (2/2 epochs)") == 4, proc.stdout
