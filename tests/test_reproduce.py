"""Tests of the Table-1 sweep runner (reproduce.py) and its table (table1.py): a local sweep end to
end and the same numbers as a single main.py run, a killed sweep resumed to the same results,
divergence, bad input refused with nothing written, Slurm submission against stand-in sbatch/srun,
and the aggregation (hand-computed numbers, the old runner's sweep folder, damaged results).

Runs are tiny (2 000 training images, T 8, K 3) with one thread each.  Whatever trains is a
subprocess; the rest calls reproduce.main / table1 in-process.  As in test_cli.py, the real MNIST
is read from <repo>/data (`make data`), and those tests are marked `mnist`.
"""
import json
import os
import pickle
import re
import shutil
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
IO = ["--data-dir", DATA, "--threads", 1]
OLD_SWEEP = REPO / "tests" / "data" / "old-sweep"

sys.path.insert(0, str(REPO))
import reproduce as rp  # noqa: E402
import table1  # noqa: E402

sys.path.remove(str(REPO))


def cmd(*args):
    return [sys.executable, str(REPO / "reproduce.py"), *map(str, args)]


def run_repro(*args, cwd=None):
    return subprocess.run(cmd(*args), cwd=cwd or REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def call(capsys, *args):
    """reproduce.main in-process: (exit code, stdout, stderr)."""
    code = rp.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def only_trial(results_dir, preset, seed):
    trials = sorted(Path(results_dir).glob(f"runs/{preset}__*/seed-{seed}/*/*/Trial-*"))
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
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if not k.startswith("seconds") and k != "elapsed_time"}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def assert_same_results(a, b):
    """Two results.json of the same experiment: every error and count the same; the losses (float32
    means) to round-off, as their last bits have been seen to differ between identical runs here."""
    a, b = strip_timing(a), strip_timing(b)
    for k in [k for k in a if k.startswith("loss")]:
        assert a.pop(k) == pytest.approx(b.pop(k), rel=1e-6), k
    assert a == b


def children(pid):
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def wait_until(cond, what, timeout=TIMEOUT, step=0.01):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return got


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.is_file() and p.read_bytes())
            for p in Path(root).rglob("*")}


def decodable_png(path):
    from matplotlib.image import imread
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    """The uninterrupted reference: 2 presets x 2 seeds x 2 epochs, 2 at once, started from a
    directory that is not the repository."""
    assert HAVE_MNIST, f"MNIST files missing in {RAW} (run `make data`)"
    root = tmp_path_factory.mktemp("sweep")
    results = root / "table"
    proc = run_repro("--presets", "P-1h", "EB-1h", "--seeds", 1, 2, *TINY, *IO, "--workers", 2,
                     "--results-dir", results, cwd=root)
    return dict(dir=results, proc=proc, table=load(results / "table1.json") if proc.returncode == 0 else None)


# ------------------------------------------------------------------------------------------------
# training sweeps (subprocesses)

@pytest.mark.mnist
@pytest.mark.slow
def test_local_sweep_end_to_end(full_sweep):
    proc, results = ok(full_sweep["proc"]), full_sweep["dir"]
    for preset in ("P-1h", "EB-1h"):
        for seed in (1, 2):
            res = load(only_trial(results, preset, seed) / "results.json")
            assert res["epochs_done"] == 2 and res["seed"] == seed and len(res["error_test_bptt_tab"]) == 2
            for epoch in (1, 2):
                assert re.search(rf"^\[{preset} seed {seed}\] epoch {epoch}/2\s+EP: train error .*test error",
                                 proc.stdout, re.M), proc.stdout
            assert f"[{preset} seed {seed}] done: 2/2 epochs" in proc.stdout
            assert load(only_trial(results, preset, seed).parents[2] / "run.json")["seed"] == seed
    assert load(results / "sweep.json")["flags"] == ["--Kmax", "3", "--T", "8", "--epochs", "2",
                                                     "--test-subset", "100", "--train-subset", "2000"]
    rows = full_sweep["table"]["rows"]
    assert [(r["preset"], r["method"]) for r in rows] == [("EB-1h", "EP"), ("EB-1h", "BPTT"), ("P-1h", "EP"),
                                                         ("P-1h", "BPTT")]
    for r in rows:
        sfx = "" if r["method"] == "EP" else "_bptt"
        per_seed = [load(only_trial(results, r["preset"], s) / "results.json") for s in (1, 2)]
        finals = [res[f"error_test{sfx}_tab"][-1] for res in per_seed]
        assert r["seeds"] == [1, 2] and r["epochs_done"] == [2, 2] and r["complete"]
        assert r["final_test_error_mean"] == pytest.approx(statistics.mean(finals))
        assert r["final_test_error_std"] == pytest.approx(statistics.stdev(finals))
        assert r["final_train_error_mean"] == pytest.approx(statistics.mean(
            res[f"error_train{sfx}_tab"][-1] for res in per_seed))
        for s, res in zip(r["per_seed"], per_seed):  # each seed's numbers and curves
            assert s["test_error"] == res[f"error_test{sfx}_tab"] and s["train_error"] == res[f"error_train{sfx}_tab"]
            assert s["best_test_error"] == min(s["test_error"]) and s["final_train_error"] == s["train_error"][-1]
    assert all(r["final_test_error_mean"] < 50 for r in rows if r["preset"] == "P-1h"), rows  # it learns
    md = (results / "table1.md").read_text()
    assert re.search(r"^\| P-1h \| `--Kmax 3 .*` \| EP \| 2 \| 2/2 \| \d+\.\d\d ± \d+\.\d\d \|.*\| 2\.00 ± 0\.13 \|",
                     md, re.M), md
    assert "best test (chosen on test)" in md
    decodable_png(results / "table1.png")
    assert not list(results.rglob("*.tmp"))


@pytest.mark.mnist
@pytest.mark.slow
def test_a_sweep_run_gives_the_numbers_of_a_single_main_py_run(full_sweep, tmp_path):
    ok(full_sweep["proc"])
    trial = only_trial(full_sweep["dir"], "P-1h", 2)
    ok(subprocess.run([sys.executable, "main.py", "--preset", "P-1h", "--seed", "2", *map(str, TINY), "--quiet",
                       *map(str, IO), "--results-dir", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True,
                      text=True, timeout=TIMEOUT))
    single = next(tmp_path.glob("*/*/Trial-1"))
    assert_same_results(load(single / "results.json"), load(trial / "results.json"))
    args = [{k: v for k, v in load(t / "config.json")["args"].items() if k != "results_dir"} for t in (single, trial)]
    assert args[0] == args[1]


@pytest.mark.mnist
@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_results_and_skips_finished_runs(full_sweep, tmp_path):
    """One run at a time: SIGKILL the runner once seed 1 has saved epoch 1 of 2; its worker dies
    with it.  The same command again resumes seed 1 and starts seed 2, to the numbers of the
    uninterrupted sweep; a third time it skips both."""
    ok(full_sweep["proc"])
    results = tmp_path / "killed"
    argv = cmd("--presets", "P-1h", "--seeds", 1, 2, *TINY, *IO, "--workers", 1, "--results-dir", results)
    runner = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: epochs_saved(results).get(("P-1h", 1)) == 1, "seed 1 to save its first epoch")
        workers = children(runner.pid)
        runner.send_signal(signal.SIGKILL)
        assert runner.wait(60) == -signal.SIGKILL
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert workers
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), "the workers to die", timeout=30)
    assert epochs_saved(results) == {("P-1h", 1): 1}, "the kill was meant to land in seed 1's second epoch"

    proc = ok(subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT))
    assert "[P-1h seed 1] resume from epoch 1/2" in proc.stdout and "[P-1h seed 2] start" in proc.stdout, proc.stdout
    for seed in (1, 2):
        assert_same_results(load(only_trial(results, "P-1h", seed) / "results.json"),
                            load(only_trial(full_sweep["dir"], "P-1h", seed) / "results.json"))
    assert strip_timing(load(results / "table1.json")["rows"]) == \
        strip_timing([r for r in full_sweep["table"]["rows"] if r["preset"] == "P-1h"])

    stamps = {s: (only_trial(results, "P-1h", s) / "results.json").stat().st_mtime_ns for s in (1, 2)}
    proc = ok(subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT))
    assert "epoch 1/2" not in proc.stdout and proc.stdout.count("done: already done (2/2 epochs)") == 2, proc.stdout
    assert stamps == {s: (only_trial(results, "P-1h", s) / "results.json").stat().st_mtime_ns for s in (1, 2)}


@pytest.mark.mnist
@pytest.mark.slow
def test_divergence_is_recorded_and_not_rerun(tmp_path):
    """EB-1h unclamped with absurd rates diverges in epoch 1 (a results.json with "diverged", no
    checkpoint): reported, in the table, the sweep goes on to the next seed, not rerun later."""
    assert HAVE_MNIST
    results = tmp_path / "div"
    argv = ["--presets", "EB-1h", "--seeds", 1, 2, "--epochs", 1, "--train-subset", 200, "--test-subset", 100,
            "--T", 8, "--Kmax", 3, "--no-clamp", "--activation-function", "tanh", "--lr_tab", "1e30", "1e30",
            *IO, "--results-dir", results]
    proc = ok(run_repro(*argv))
    for seed in (1, 2):
        assert re.search(rf"^\[EB-1h seed {seed}\] DIVERGED: diverged: epoch 1, batch \d+, method EP",
                         proc.stdout, re.M), proc.stdout
    assert "2 diverged" in proc.stdout
    rows = {r["method"]: r for r in load(results / "table1.json")["rows"]}
    assert rows["EP"]["diverged"] == [1, 2] and rows["EP"]["epochs_done"] == [0, 0]
    assert rows["EP"]["final_test_error_mean"] is None
    assert rows["BPTT"]["diverged"] == [] and rows["BPTT"]["stopped_by_divergence"] == [1, 2]
    assert "diverged: seed 1, 2" in (results / "table1.md").read_text()
    trial = only_trial(results, "EB-1h", 1)
    proc = ok(run_repro(*argv))
    assert "[EB-1h seed 1] DIVERGED: diverged in an earlier sitting, not rerun" in proc.stdout, proc.stdout
    assert only_trial(results, "EB-1h", 1) == trial


@pytest.mark.mnist
def test_a_trial_without_progress_is_discarded_not_resumed(tmp_path, capsys):
    """A run killed before its first epoch ended leaves a Trial with config.json and no checkpoint:
    the job removes it and starts afresh (one Job call, in-process)."""
    assert HAVE_MNIST
    args, extra = rp.make_parser().parse_known_args(list(map(str, [
        "--presets", "P-1h", "--seeds", 3, "--epochs", 1, "--train-subset", 200, "--test-subset", 100, "--T", 8,
        "--Kmax", 3, *IO, "--results-dir", tmp_path])))
    (run,) = rp.plan(args, extra).runs
    stale = run.folder / "ep_disc_1hidden" / "cpu-2020-01-01" / "Trial-1"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text(json.dumps({"args": {"epochs": 1}}))
    import torch
    threads = torch.get_num_threads()
    try:
        out = rp.Job()(run)
    finally:  # the run set this process's torch threads
        torch.set_num_threads(threads)
    assert out.code == 0 and f"discarded {stale}" in capsys.readouterr().out
    assert not stale.exists() and load(only_trial(tmp_path, "P-1h", 3) / "results.json")["epochs_done"] == 1


def test_bad_flags_through_the_command_line(tmp_path):
    results = tmp_path / "out"
    proc = run_repro("--presets", "P-1h", "--seeds", 1, "--T", 8, "--Kmax", 9, "--results-dir", results, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr == "reproduce.py: error: --Kmax must be <= --T (got Kmax 9 > T 8)\n"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# bad input: exit 2, one line on stderr, nothing written (in-process)

BAD = {
    "unknown-preset": (["--presets", "P-9h", "--seeds", 1], r"'P-9h' is not a train preset"),
    "figure-preset": (["--presets", "fig2-toy", "--seeds", 1], r"fig2-toy.*not a train preset"),
    "empty-seed-list": (["--presets", "P-1h", "--seeds"], r"--seeds"),
    "no-seeds": (["--presets", "P-1h"], r"--seeds: give at least one"),
    "duplicate-seeds": (["--presets", "P-1h", "--seeds", 1, 2, 1], r"--seeds: duplicate 1"),
    "duplicate-presets": (["--presets", "P-1h", "P-1h", "--seeds", 1], r"--presets: duplicate P-1h"),
    "negative-workers": (["--presets", "P-1h", "--seeds", 1, "--workers", -2], r"--workers must be >= 1"),
    "reserved-flag": (["--presets", "P-1h", "--seeds", 1, "--seed", 4], r"--seed cannot be passed through"),
    "abbreviated-flag": (["--presets", "P-1h", "--seeds", 1, "--res", "x"], r"unrecognized arguments: --res"),
    "bad-main-value": (["--presets", "P-1h", "--seeds", 1, "--epochs", "two"], r"--epochs: invalid int"),
    "K-above-T": (["--presets", "EB-1h", "--seeds", 1, "--T", 8, "--Kmax", 9], r"--Kmax must be <= --T"),
    "unused-flag": (["--presets", "P-1h", "--seeds", 1, "--no-clamp"], r"--no-clamp: not used"),
    "seed-range": (["--presets", "P-1h", "--seeds", -1], r"--seed must be in"),
    "table-only-empty": (["--table-only"], r"no runs"),
    "table-only-with-presets": (["--table-only", "--presets", "P-1h"], r"--table-only runs nothing"),
    "grid-unknown-key": (["--presets", "P-1h", "--seeds", 1, "--grid", "gamma=1,2"],
                         r"--grid gamma=1,2: expected KEY=V1,V2,\.\.\. with KEY one of beta, lr-scale, nudging"),
    "grid-no-values": (["--presets", "P-1h", "--seeds", 1, "--grid", "beta"], r"--grid beta: expected KEY=V1,V2"),
    "grid-twice": (["--presets", "P-1h", "--seeds", 1, "--grid", "beta=0.1", "beta=0.2"], r"--grid beta=0.2: .*once"),
    "grid-and-its-flag": (["--presets", "P-1h", "--seeds", 1, "--beta", 0.2, "--grid", "beta=0.1,0.3"],
                          r"--grid beta=0.1,0.3: .*not also passed"),
    "grid-not-a-number": (["--presets", "P-1h", "--seeds", 1, "--grid", "lr-scale=1,two"], r"take numbers"),
    "grid-bad-value": (["--presets", "P-1h", "--seeds", 1, "--grid", "beta=0.1,-1"], r"--beta must be a finite number"),
    "grid-bad-nudging": (["--presets", "P-1h", "--seeds", 1, "--grid", "nudging=symmetric,both"], r"--nudging: invalid"),
    "table-only-with-stack": (["--table-only", "--stack"], r"--table-only runs nothing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case, tmp_path, capsys):
    argv, pattern = BAD[case]
    code, out, err = call(capsys, *argv, "--results-dir", tmp_path / "out")
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce.py: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_results_dir_keeps_one_flag_set(tmp_path, capsys):
    sweep = shutil.copytree(OLD_SWEEP, tmp_path / "old")
    before = snapshot(sweep)
    code, _, err = call(capsys, "--presets", "P-1h", "--seeds", 3, "--epochs", 1, "--results-dir", sweep)
    assert code == 2 and err.count("\n") == 1, err
    assert "[--epochs 2 --test-subset 500 --train-subset 1000]" in err and "[--epochs 1]" in err, err
    assert snapshot(sweep) == before


def test_flag_sets_are_canonical_and_runtime_flags_not_identity(tmp_path):
    def planned(*extra):
        args, rest = rp.make_parser().parse_known_args(["--presets", "P-1h", "--seeds", "2", "--results-dir",
                                                        str(tmp_path), *map(str, extra)])
        sweep = rp.plan(args, rest)
        return sweep.flags, [r.folder for r in sweep.runs]
    a = planned("--train-subset", 200, "--epochs=1", "--lr_tab", 0.1, 0.2)
    b = planned("--epochs", 3, "--lr-tab", "0.1", "0.2", "--epochs", 1, "--train-subset", 200, "--threads", 2,
                "--data-dir", "elsewhere", "--quiet")
    assert a == b and a[0] == ("--epochs", "1", "--lr_tab", "0.1", "0.2", "--train-subset", "200")
    assert planned("--epochs", 2, "--train-subset", 200)[1] != a[1]
    assert a[1][0].parent.parent == tmp_path / "runs" and a[1][0].name == "seed-2"
    assert list(tmp_path.iterdir()) == []  # planning writes nothing


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        rp.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    for action in rp.make_parser()._actions:
        assert action.help and all(opt in out for opt in action.option_strings), action.option_strings
    for word in ("--executor", "(default: 1440)", "(default: results/table1)", "--threads"):
        assert word in out, word


# ------------------------------------------------------------------------------------------------
# Slurm, against stand-ins for sbatch and srun

def fake_slurm(tmp_path, monkeypatch, sbatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\n" + sbatch)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ["PATH"]]))


def test_slurm_submission_with_a_fake_sbatch(tmp_path, monkeypatch, capsys):
    """One array job with the requested resources, whose calls are Job()(run); nothing runs, the
    runner returns."""
    fake_slurm(tmp_path, monkeypatch, f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    results = tmp_path / "out"
    code, out, err = call(capsys, "--executor", "slurm", "--presets", "P-1h", "--seeds", 1, 2, "--epochs", 3,
                          "--slurm-partition", "gpu", "--slurm-time", 600, "--slurm-gpus", 1, "--slurm-cpus", 4,
                          "--slurm-mem", 32, "--device-label", 0, "--results-dir", results)
    assert code == 0, err
    assert "[P-1h seed 1] job 4242_0" in out and "[P-1h seed 2] job 4242_1" in out, out
    assert f"--table-only --results-dir {results}" in out
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=600", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32GB", "#SBATCH --array=0-1%2",
                 f"export PYTHONPATH={REPO}"):
        assert line in script, (line, script)
    for k, seed in enumerate((1, 2)):
        call_ = pickle.loads((results / "slurm" / f"4242_{k}" / f"4242_{k}_submitted.pkl").read_bytes())
        (run,) = call_.args
        assert isinstance(call_.function, rp.Job) and run.seed == seed
        assert (run.cfg.preset, run.cfg.epochs, run.cfg.device_label, run.cfg.threads) == ("P-1h", 3, 0, 4)
        assert load(run.folder / "run.json")["flags"] == ["--epochs", "3"]
        assert not list(run.folder.glob("*/*/Trial-*"))  # submitted, not run
    assert load(results / "sweep.json")["runtime_flags"] == ["--device-label", "0"]
    again = rp.Job().checkpoint(run)  # preemption: the same call again, which resumes
    assert isinstance(again.function, rp.Job) and again.args == (run,)


def test_failed_slurm_submission_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch, 'echo "sbatch: error: Batch job submission failed: Unable to contact '
                                      'slurm controller (connect failure)" >&2\nexit 1\n')
    results = tmp_path / "out"
    results.mkdir()
    code, out, err = call(capsys, "--executor", "slurm", "--presets", "P-1h", "--seeds", 1, 2, "--epochs", 1,
                          "--results-dir", results)
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and "Unable to contact slurm controller" in err, err
    assert list(results.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# populations (--stack) and grids (--grid)

STACK_TINY = ["--epochs", 1, "--train-subset", 200, "--test-subset", 100, "--T", 8, "--Kmax", 3]


def planned(tmp_path, *argv):
    args, extra = rp.make_parser().parse_known_args([str(a) for a in ["--results-dir", tmp_path, *argv]])
    return rp.plan(args, extra)


def run_files(results_dir):
    """Every file of a sweep's run folders, relative to the sweep."""
    return sorted(str(p.relative_to(results_dir)) for p in Path(results_dir).glob("runs/**/*") if p.is_file())


@pytest.fixture(scope="module")
def stacked_and_not(tmp_path_factory):
    """The same 2-seed command with and without --stack, one after the other."""
    assert HAVE_MNIST, f"MNIST files missing in {RAW} (run `make data`)"
    root = tmp_path_factory.mktemp("stack")
    argv = ["--presets", "P-1h", "--seeds", 1, 2, *STACK_TINY, *IO]
    return {name: (root / name, run_repro(*argv, *extra, "--results-dir", root / name), argv)
            for name, extra in (("stacked", ["--stack"]), ("per-seed", []))}


@pytest.mark.mnist
@pytest.mark.slow
def test_a_stacked_sweep_writes_the_layout_and_numbers_of_a_per_seed_sweep(stacked_and_not, capsys):
    """One population job: each member's folder where the per-seed runner puts it, with the same files
    and run.json; the per-epoch numbers those of the per-seed sweep within the float32 round-off that
    tests/test_population.py measured (no error entry differed there; allowed: one example an entry, LOSS_TOL
    on losses); --table-only aggregates it with both seeds."""
    from test_population import LOSS_TOL
    (stacked, proc, _), (single, proc1, _) = stacked_and_not["stacked"], stacked_and_not["per-seed"]
    ok(proc), ok(proc1)
    assert re.search(r"^\[P-1h seed 1\] start: .*\(in the P-1h: population of 2\)$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\[P-1h: population of 2\] epoch 1/1 +EP: 2 members", proc.stdout, re.M), proc.stdout
    assert "[P-1h seed 2] done: 1/1 epochs" in proc.stdout
    assert run_files(stacked) == run_files(single)
    for seed in (1, 2):
        trial, ref = only_trial(stacked, "P-1h", seed), only_trial(single, "P-1h", seed)
        assert load(trial.parents[2] / "run.json") == load(ref.parents[2] / "run.json")
        rec = load(trial / "config.json")
        assert rec["population"]["size"] == 2 and rec["population"]["members"] == [1, 2]
        assert f"--seed {seed} " in rec["command"] and f"--results-dir {trial.parents[2]}" in rec["command"]
        assert {k: v for k, v in rec["args"].items() if k != "results_dir"} == \
               {k: v for k, v in load(ref / "config.json")["args"].items() if k != "results_dir"}
        a, b = load(trial / "results.json"), load(ref / "results.json")
        assert a["epochs_done"] == b["epochs_done"] == 1 and a["seed"] == b["seed"] == seed
        for key, one in (("error_train", 100 / 200), ("error_test", 100 / 100), ("loss", LOSS_TOL)):
            for sfx in ("", "_bptt"):
                u, v = a[f"{key}{sfx}_tab"], b[f"{key}{sfx}_tab"]
                assert len(u) == len(v) == 1 and all(abs(x - y) <= one for x, y in zip(u, v)), (key + sfx, u, v)
    code, out, err = call(capsys, "--table-only", "--results-dir", stacked)
    assert code == 0, err
    rows = load(stacked / "table1.json")["rows"]
    assert [(r["method"], r["seeds"], r["epochs_done"], r["complete"]) for r in rows] == \
        [("EP", [1, 2], [1, 1], True), ("BPTT", [1, 2], [1, 1], True)]


@pytest.mark.mnist
@pytest.mark.slow
def test_the_same_command_without_stack_skips_a_stacked_sweeps_finished_runs(stacked_and_not):
    stacked, proc, argv = stacked_and_not["stacked"]
    ok(proc)
    stamps = {s: (only_trial(stacked, "P-1h", s) / "results.json").stat().st_mtime_ns for s in (1, 2)}
    again = ok(run_repro(*argv, "--results-dir", stacked))
    assert again.stdout.count("done: already done (1/1 epochs)") == 2, again.stdout
    assert stamps == {s: (only_trial(stacked, "P-1h", s) / "results.json").stat().st_mtime_ns for s in (1, 2)}


@pytest.mark.mnist
@pytest.mark.slow
def test_a_population_job_resumes_runs_with_progress_alone_and_starts_the_others_together(tmp_path, capsys):
    """Seed 1 has finished epoch 1 of 2 (a per-seed sitting), seed 2 has a Trial without progress, seed 3
    nothing: one population job (in-process) resumes seed 1 alone, discards seed 2's stale Trial and
    trains seeds 2 and 3 as a population of two."""
    import torch
    import experiment
    runs = planned(tmp_path, "--presets", "P-1h", "--seeds", 1, 2, 3, *STACK_TINY, "--epochs", 2, *IO, "--stack").runs
    stale = runs[1].folder / "ep_disc_1hidden" / "cpu-2020-01-01" / "Trial-1"
    stale.mkdir(parents=True)
    threads = torch.get_num_threads()
    try:
        assert experiment.run(runs[0].cfg.replace(epochs=1), log=lambda *a, **k: None).code == 0
        outs = rp.Job()(tuple(runs))
    finally:  # the runs set this process's torch threads
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert [o.code for o in outs] == [0, 0, 0] and all(o.results["epochs_done"] == 2 for o in outs)
    assert "[P-1h seed 1] resume from epoch 1/2" in out and f"discarded {stale}" in out, out
    for seed in (2, 3):
        assert f"[P-1h seed {seed}] start: {runs[seed - 1].folder} (in the P-1h: population of 2)" in out, out
    assert re.search(r"^\[P-1h: population of 2\] epoch 2/2 +EP: 2 members", out, re.M), out
    assert not stale.exists() and load(only_trial(tmp_path, "P-1h", 1) / "config.json")["resumed"]


@pytest.mark.mnist
@pytest.mark.slow
def test_grid_points_are_rows_of_their_own(tmp_path, capsys):
    """--grid beta=0.1,0.05 with --stack: one population of the two points, a table row each (per method),
    the point's flag in the row's flags."""
    assert HAVE_MNIST
    results = tmp_path / "grid"
    proc = ok(run_repro("--presets", "P-1h", "--seeds", 1, *STACK_TINY, *IO, "--grid", "beta=0.1,0.05", "--stack",
                        "--results-dir", results))
    assert "[P-1h beta=0.05 seed 1] done: 1/1 epochs" in proc.stdout and "population of 2" in proc.stdout
    base = ["--Kmax", "3", "--T", "8", "--epochs", "1", "--test-subset", "100", "--train-subset", "200"]
    assert load(results / "sweep.json")["flags"] == base
    code, out, err = call(capsys, "--table-only", "--results-dir", results)
    assert code == 0, err
    ep = [r for r in load(results / "table1.json")["rows"] if r["method"] == "EP"]
    assert [r["flags"] for r in ep] == [base[:4] + ["--beta", beta] + base[4:] for beta in ("0.05", "0.1")]
    assert all(r["seeds"] == [1] and r["complete"] for r in ep)
    assert "`--Kmax 3 --T 8 --beta 0.05 --epochs 1" in out


def test_grid_points_are_their_own_identity(tmp_path):
    """Every point x seed a run whose canonical flags carry the point (lr-scale: the scaled --lr_tab);
    planning writes nothing."""
    sweep = planned(tmp_path, "--presets", "P-1h", "--seeds", 1, 2, "--epochs", 1, "--grid", "lr-scale=0.5,2",
                    "nudging=one-sided,symmetric")
    assert sweep.flags == ("--epochs", "1")
    points = {(r.flags, r.seed) for r in sweep.runs}
    for lrs in (["0.02", "0.04"], ["0.08", "0.16"]):
        for nudging in ("one-sided", "symmetric"):
            for seed in (1, 2):
                assert (("--epochs", "1", "--lr_tab", *lrs, "--nudging", nudging), seed) in points
    assert len(points) == len({r.folder for r in sweep.runs}) == 8
    run = next(r for r in sweep.runs if r.label == "P-1h lr-scale=2.0 nudging=symmetric seed 2")
    assert (run.cfg.lr_tab, run.cfg.nudging, run.cfg.seed) == ([0.08, 0.16], "symmetric", 2)
    assert planned(tmp_path, "--presets", "P-1h", "--seeds", 1, "--grid", "beta=0.1,0.10").runs[0].flags == \
        ("--beta", "0.1")  # one value
    assert list(tmp_path.iterdir()) == []


def test_stack_submits_one_slurm_task_per_population(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch, f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 77"\n')
    results = tmp_path / "out"
    code, out, err = call(capsys, "--executor", "slurm", "--presets", "P-1h", "EB-1h", "--seeds", 1, 2, "--epochs", 2,
                          "--grid", "beta=0.1,0.2", "--stack", "--results-dir", results)
    assert code == 0, err
    assert "#SBATCH --array=0-1%2" in (tmp_path / "submitted.sh").read_text()
    assert "[P-1h beta=0.2 seed 2] job 77_0" in out and "[EB-1h beta=0.1 seed 1] job 77_1" in out, out
    for k, preset in enumerate(("P-1h", "EB-1h")):
        call_ = pickle.loads((results / "slurm" / f"77_{k}" / f"77_{k}_submitted.pkl").read_bytes())
        (item,) = call_.args
        assert isinstance(call_.function, rp.Job) and isinstance(item, tuple)
        assert [(r.preset, r.cfg.beta, r.seed) for r in item] == [(preset, b, s) for b in (0.1, 0.2) for s in (1, 2)]


# ------------------------------------------------------------------------------------------------
# aggregation

def make_run(root, preset, seed, flags, results=None, args=None, model="ep_disc_2hidden"):
    """A run folder as the runner and main.py leave it."""
    folder = root / "runs" / f"{preset}__x" / f"seed-{seed}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(dict(preset=preset, seed=seed, flags=flags)))
    if results is not None:
        trial = folder / model / "cpu-2020-01-01" / "Trial-1"
        trial.mkdir(parents=True)
        (trial / "results.json").write_text(json.dumps(dict(action="train", method="EP", seed=seed, **results)))
        (trial / "config.json").write_text(json.dumps({"args": dict(args or {}, seed=seed)}))


def tabs(test, train, secs, bptt=None):
    out = dict(epochs_done=len(test), error_test_tab=test, error_train_tab=train, seconds_tab=secs)
    if bptt:
        out.update(error_test_bptt_tab=bptt[0], error_train_bptt_tab=bptt[1], seconds_bptt_tab=bptt[2])
    return out


def test_aggregation_matches_hand_computed_numbers(tmp_path, capsys):
    root = tmp_path / "agg"
    # P-2h, 3 epochs: seeds 1, 2 finished, seed 3 at epoch 2, seed 4 has no epoch yet
    make_run(root, "P-2h", 1, [], tabs([5.0, 3.0, 2.0], [6, 4, 1.5], [10] * 3,
                                       ([5.5, 3.5, 2.5], [7, 5, 3.0], [20] * 3)), {"epochs": 3})
    make_run(root, "P-2h", 2, [], tabs([4.0, 2.5, 2.5], [5, 3, 2.0], [12] * 3,
                                       ([5.0, 3.0, 3.0], [6, 4, 2.0], [20] * 3)), {"epochs": 3})
    make_run(root, "P-2h", 3, [], tabs([4.5, 1.5], [5, 2.5], [14] * 2, ([6.0, 4.0], [6, 3.5], [20] * 2)), {"epochs": 3})
    make_run(root, "P-2h", 4, [])
    # P-1h-T30K10, one seed: BPTT diverged in epoch 2 (EP had finished it)
    res = tabs([3.0, 2.2], [3.5, 2.0], [1, 1], ([4.0], [4.5], [2]))
    res.update(epochs_done=1, diverged="diverged: epoch 2, batch 7, method BPTT (state is NaN/inf)")
    make_run(root, "P-1h-T30K10", 7, ["--epochs", "2"], res, {"epochs": 2}, model="ep_disc_1hidden")
    # P-1h, EP only, symmetric nudging; the seeds split: one learnt, one did not
    nud = ["--no-benchmark", "--nudging", "symmetric"]
    for seed, final in ((1, 2.1), (2, 15.0)):
        make_run(root, "P-1h", seed, nud, tabs([20.0, final], [8.0, 1.0], [3, 3]),
                 {"epochs": 2, "nudging": "symmetric", "benchmark": False}, model="ep_disc_1hidden")

    code, out, err = call(capsys, "--table-only", "--results-dir", root)
    assert code == 0, err
    table = load(root / "table1.json")
    rows = {(r["preset"], r["method"]): r for r in table["rows"]}
    assert list(rows) == [("P-1h", "EP"), ("P-1h-T30K10", "EP"), ("P-1h-T30K10", "BPTT"), ("P-2h", "EP"),
                          ("P-2h", "BPTT")]
    ep = rows[("P-2h", "EP")]
    assert ep["seeds"] == [1, 2, 3] and ep["epochs_done"] == [3, 3, 2] and ep["epochs_target"] == 3
    assert ep["complete"] is False and ep["diverged"] == [] and ep["split"] is None
    # finals 2.0, 2.5, 1.5: mean 2, sample std sqrt((0 + .25 + .25) / 2) = 0.5; train finals 1.5, 2.0, 2.5
    assert (ep["final_test_error_mean"], ep["final_test_error_std"]) == pytest.approx((2.0, 0.5))
    assert (ep["final_train_error_mean"], ep["final_train_error_std"]) == pytest.approx((2.0, 0.5))
    # best (chosen on test) 2.0, 2.5, 1.5
    assert (ep["best_test_error_mean"], ep["best_test_error_std"]) == pytest.approx((2.0, 0.5))
    assert ep["seconds_per_epoch_mean"] == pytest.approx(12.0)
    assert (ep["paper_test_error_mean"], ep["paper_test_error_std"]) == (1.95, 0.10)
    assert ep["test_error_curve_mean"] == pytest.approx([4.5, 7 / 3, 2.25])
    assert ep["train_error_curve_mean"] == pytest.approx([16 / 3, 19 / 6, 1.75])
    assert [s["final_test_error"] for s in ep["per_seed"]] == [2.0, 2.5, 1.5]
    assert ep["per_seed"][2]["test_error"] == [4.5, 1.5] and ep["per_seed"][2]["train_error"] == [5, 2.5]
    bp = rows[("P-2h", "BPTT")]
    # finals 2.5, 3.0, 4.0: mean 19/6, deviations -4/6, -1/6, 5/6 -> variance (42/36) / 2 = 7/12
    assert (bp["final_test_error_mean"], bp["final_test_error_std"]) == pytest.approx((19 / 6, (7 / 12) ** 0.5))
    assert (bp["paper_test_error_mean"], bp["paper_test_error_std"]) == (2.09, 0.12)
    t_ep, t_bp = rows[("P-1h-T30K10", "EP")], rows[("P-1h-T30K10", "BPTT")]
    assert t_ep["final_test_error_mean"] == 2.2 and t_ep["final_test_error_std"] is None
    assert t_ep["diverged"] == [] and t_ep["stopped_by_divergence"] == [] and t_ep["flags"] == ["--epochs", "2"]
    assert t_bp["epochs_done"] == [1] and t_bp["diverged"] == [7] and t_bp["final_test_error_mean"] == 4.0
    assert t_ep["paper_row"] == "P-1h" and t_bp["paper_test_error_mean"] == 2.0
    split = rows[("P-1h", "EP")]
    assert split["nudging"] == "symmetric" and split["flags"] == nud
    assert split["split"] == {"threshold": 10.0, "at_or_above": [2], "below": [1]}
    assert table["pending"] == [{"preset": "P-2h", "flags": [], "seeds": [4]}] and table["failed"] == []

    md = (root / "table1.md").read_text()
    assert re.search(r"^\| P-2h \| – \| EP \| 3 \| 2–3/3 \| 2\.00 ± 0\.50 \| 2\.00 ± 0\.50 \| 2\.00 ± 0\.50 \| "
                     r"1\.95 ± 0\.10 \| 12\.0 \| unfinished: seed 3 at 2 \|$", md, re.M), md
    assert re.search(r"^\| P-1h-T30K10 \| `--epochs 2` \| BPTT \| 1 \| 1/2 \| 4\.00 \|.*diverged: seed 7", md, re.M), md
    assert "8.55 ± 9.12 (split: 1 of 2 seeds ≥ 10 %: 2.10, 15.00)" in md, md
    assert "nudging symmetric" in md and "P-2h (flags (none)), seeds [4]" in md
    assert "best test (chosen on test)" in md
    decodable_png(root / "table1.png")


def test_table_only_on_the_old_runners_sweep_gives_its_table(tmp_path, capsys):
    sweep = shutil.copytree(OLD_SWEEP, tmp_path / "old")
    (sweep / "table1.json").unlink()
    code, out, err = call(capsys, "--table-only", "--results-dir", sweep)
    assert code == 0 and err == "", err
    old, new = load(OLD_SWEEP / "table1.json"), load(sweep / "table1.json")
    assert len(old["rows"]) == len(new["rows"]) == 2 and new["pending"] == new["failed"] == []
    for a, b in zip(old["rows"], new["rows"]):
        for k, v in a.items():  # every key of the old table, the same value (the new one has more keys)
            assert b[k] == (pytest.approx(v) if isinstance(v, (float, list)) and k != "flags" else v), k
    assert "| P-1h | `--epochs 2 --test-subset 500 --train-subset 1000` | EP | 2 | 2/2 | 23.60 ± 1.13 |" in out


def test_a_damaged_results_json_is_a_failed_seed(tmp_path, capsys):
    sweep = shutil.copytree(OLD_SWEEP, tmp_path / "old")
    next(sweep.glob("runs/*/seed-2/*/*/Trial-1/results.json")).write_text('{"error_test_tab": [29.0, 2')
    code, out, err = call(capsys, "--table-only", "--results-dir", sweep)
    assert code == 0 and re.search(r"P-1h seed 2: failed seed, left out of the numbers: .*results.json: not JSON",
                                   err), err
    table = load(sweep / "table1.json")
    assert [(r["seeds"], r["failed_seeds"]) for r in table["rows"]] == [([1], [2]), ([1], [2])]
    assert table["failed"][0]["seed"] == 2 and "not JSON" in table["failed"][0]["reason"]
    md = (sweep / "table1.md").read_text()
    assert "failed (results unreadable): seed 2" in md and "Failed seed (left out of the numbers)" in md


def test_table_only_on_the_docs_sweeps(tmp_path, capsys):
    """A docs/table1 sweep with run files aggregates to the numbers of its table1.json; one without
    (the old per-run files were not kept) is refused and its table left as it is."""
    folders = sorted(p.parent for p in (REPO / "docs" / "table1").glob("*/table1.json"))
    assert folders
    for folder in folders:
        if table1.has_runs(folder):
            copy = shutil.copytree(folder, tmp_path / folder.name)
            assert call(capsys, "--table-only", "--results-dir", copy)[0] == 0
            for a, b in zip(load(folder / "table1.json")["rows"], load(copy / "table1.json")["rows"]):
                assert b["final_test_error_mean"] == pytest.approx(a["final_test_error_mean"])
        else:
            before = snapshot(folder)
            code, _, err = call(capsys, "--table-only", "--results-dir", folder)
            assert code == 2 and "no runs" in err and snapshot(folder) == before


def test_summary_figure_and_combined_table(tmp_path, capsys):
    ctrl = tmp_path / "original"
    ctrl.mkdir()
    (ctrl / "P-1h-EP-run1.json").write_text(json.dumps(dict(
        name="P-1h-EP-run1", command=["python", "main.py", "--epochs", "15"], train_error=[9.3, 4.5],
        test_error=[5.1, 4.0], seconds_per_epoch=[77, 86], complete=False)))
    docs = sorted(str(p.parent) for p in (REPO / "docs" / "table1").glob("*/table1.json"))
    assert table1.main(["summary", "--out", str(tmp_path / "s.png"), "--original", str(ctrl), *docs]) == 0
    decodable_png(tmp_path / "s.png")
    assert table1.controls(ctrl)[("P-1h", "EP")][0]["test_error"][-1] == 4.0

    sweep = shutil.copytree(OLD_SWEEP, tmp_path / "old")
    capsys.readouterr()
    assert table1.main(["collect", "--into", str(tmp_path / "docs"), str(sweep)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "docs" / "old" / "table1.png").is_file()
    assert out.startswith("| sweep | preset |") and out.count("| old | P-1h |") == 2, out


def test_stack_with_workers_splits_each_preset_into_one_population_per_worker(tmp_path):
    runs = planned(tmp_path, "--presets", "P-1h", "EB-1h", "--seeds", 1, 2, 3, *STACK_TINY, "--stack").runs
    seeds = lambda items: [[(r.preset, r.seed) for r in item] for item in items]  # noqa: E731
    assert seeds(rp.jobs_of(runs, True, 2)) == [[("P-1h", 1), ("P-1h", 3)], [("P-1h", 2)],
                                                [("EB-1h", 1), ("EB-1h", 3)], [("EB-1h", 2)]]
    assert seeds(rp.jobs_of(runs, True)) == [[("P-1h", 1), ("P-1h", 2), ("P-1h", 3)],
                                             [("EB-1h", 1), ("EB-1h", 2), ("EB-1h", 3)]]
    assert seeds(rp.jobs_of(runs, True, 5)) == [[("P-1h", s)] for s in (1, 2, 3)] + [[("EB-1h", s)] for s in (1, 2, 3)]
    assert rp.jobs_of(runs, False, 2) == list(runs)
