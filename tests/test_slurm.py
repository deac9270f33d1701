"""reproduce.py --executor slurm against a real single-node Slurm cluster (tests/slurm_cluster.py:
munged, slurmctld and slurmd of Debian's slurm-wlm, started for this module in a temporary folder
and stopped after it): a sweep submitted, run by Slurm and aggregated with --table-only; a job
requeued after its first epoch (`scontrol requeue`, what a preemption does) that resumes from its
checkpoint; a controller that is down, refused in one line with nothing written.

Without Slurm (or MNIST) the module is skipped with the reason.  In CI (env CI set) with Slurm
installed, a cluster that does not start fails the tests instead: .ci/run installs slurm-wlm and
munge, so only a failed install may skip them there.  Runs are tiny and take one CPU each.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, SlurmError, free_port, missing_programs, which
from test_cli import DATA, ENV, HAVE_MNIST, REPO, load, ok

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

JOB_TIMEOUT = 150  # seconds for a sweep's jobs to finish
SLURM = ["--executor", "slurm", "--slurm-partition", "debug", "--slurm-mem", 0, "--slurm-cpus", 1,
         "--slurm-time", 30, "--threads-per-run", 1]
JOB_LINE = re.compile(r"^\[(?P<label>[^\]]+)\] job (?P<id>\d+(?:_\d+)?), log (?P<log>\S+)$", re.M)


def unavailable(reason, detail=""):
    """Skip (one line), except in CI with Slurm installed: there the cluster must start."""
    if os.environ.get("CI") and not missing_programs():
        pytest.fail(f"Slurm is installed but {reason}\n{detail}".rstrip(), pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    missing = missing_programs()
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} missing: apt-get install slurm-wlm munge)")
    if not HAVE_MNIST:
        unavailable(f"the MNIST files are missing in {DATA} (run `make data`)")
    root = Path(tempfile.mkdtemp(prefix="ep-slurm-", dir="/tmp"))  # short: a socket's path is limited
    c = SlurmCluster(root)
    try:
        error = None
        try:
            c.start()
        except (SlurmError, OSError, subprocess.SubprocessError) as e:
            error = str(e) or type(e).__name__
        if error:
            first, *rest = error.splitlines()
            unavailable(f"the test cluster did not start: {first}", "\n".join(rest))
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def repro(cluster, *args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(REPO / "reproduce.py"), *map(str, args)], cwd=REPO,
                          env=env or dict(ENV, SLURM_CONF=str(cluster.conf)), capture_output=True, text=True,
                          timeout=timeout)


def submitted(proc):
    """{label: (slurm job id, log path)} from the lines `[P-1h seed 1] job 12_0, log ...`."""
    return {m["label"]: (m["id"], Path(m["log"])) for m in JOB_LINE.finditer(proc.stdout)}


def wait_done(cluster, jobs):
    try:
        states = cluster.wait_jobs([j for j, _ in jobs.values()], JOB_TIMEOUT)
    except SlurmError as e:
        pytest.fail(f"{e}\n" + job_logs(jobs), pytrace=False)
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n" + job_logs(jobs)


def job_logs(jobs):
    out = []
    for _, log in jobs.values():
        for f in (log, log.with_name(log.name.replace("_log.out", "_log.err"))):
            if f.exists():
                out.append(f"--- {f}\n{f.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)


def trial_of(results, preset, seed):
    trials = sorted(Path(results).glob(f"runs/{preset}__*/seed-{seed}/*/*/Trial-*"))
    assert len(trials) == 1, trials
    return trials[0]


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def test_sweep_runs_on_slurm_and_aggregates(cluster, tmp_path):
    results = tmp_path / "sweep"
    proc = ok(repro(cluster, "--presets", "P-1h", "--seeds", 1, 2, "--epochs", 2, "--train-subset", 200,
                    "--test-subset", 100, *SLURM, "--data-dir", DATA, "--results-dir", results))
    jobs = submitted(proc)
    assert sorted(jobs) == ["P-1h seed 1", "P-1h seed 2"], proc.stdout
    assert f"--table-only --results-dir {results}" in proc.stdout
    wait_done(cluster, jobs)
    ok(repro(cluster, "--table-only", "--results-dir", results))
    rows = load(results / "table1.json")["rows"]
    assert [(r["preset"], r["method"], r["seeds"], r["epochs_done"], r["complete"]) for r in rows] == \
        [("P-1h", "EP", [1, 2], [2, 2], True), ("P-1h", "BPTT", [1, 2], [2, 2], True)], rows
    assert load(results / "table1.json")["pending"] == []


# Long enough that the requeue lands while the run trains: on a loaded machine polling the job can
# take seconds, and an epoch of 10 000 images takes ~2 s alone (a requeue after the last epoch
# would restart a finished run, which resumes nothing).
REQUEUE_EPOCHS = 6


def test_requeued_job_resumes_from_its_checkpoint(cluster, tmp_path):
    """`scontrol requeue` after the first epoch: the job is killed and started again under the same
    id; it resumes the run from its checkpoint, so epoch 1 is not recomputed."""
    results = tmp_path / "requeue"
    proc = ok(repro(cluster, "--presets", "P-1h", "--seeds", 1, "--epochs", REQUEUE_EPOCHS, "--train-subset", 10000,
                    "--test-subset", 100, *SLURM, "--data-dir", DATA, "--results-dir", results))
    jobs = submitted(proc)
    assert list(jobs) == ["P-1h seed 1"], proc.stdout
    job_id, log = jobs["P-1h seed 1"]
    res_file = lambda: next(iter(results.glob("runs/P-1h__*/seed-1/*/*/Trial-*/results.json")), None)  # noqa: E731
    deadline = time.monotonic() + JOB_TIMEOUT
    while not ((f := res_file()) and (first := read_json(f)) and first.get("epochs_done", 0) >= 1):
        assert time.monotonic() < deadline, "no epoch finished in time\n" + job_logs(jobs)
        info = cluster.job_info(job_id)
        assert info.get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"), f"{info}\n" + job_logs(jobs)
        time.sleep(0.2)
    assert first["epochs_done"] < REQUEUE_EPOCHS - 2, "the run was nearly over before its requeue: make it longer"
    cluster.run("scontrol", "requeue", job_id)
    # a requeued job waits two minutes before it may start again (Slurm's BeginTime): not here
    deadline = time.monotonic() + 30
    while cluster.job_info(job_id).get("JobState") != "PENDING":
        assert time.monotonic() < deadline, cluster.job_info(job_id)
        time.sleep(0.2)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    wait_done(cluster, jobs)
    assert cluster.job_info(job_id)["Restarts"] == "1"

    trial = trial_of(results, "P-1h", 1)
    res = load(trial / "results.json")
    assert res["epochs_done"] == REQUEUE_EPOCHS and "diverged" not in res, res
    tabs = [k for k in first if k.endswith("_tab") and not k.startswith("seconds")]
    assert "error_test_tab" in tabs and "error_test_bptt_tab" in tabs, tabs
    for k in tabs:
        assert len(res[k]) == REQUEUE_EPOCHS, (k, res[k])
        assert res[k][:first["epochs_done"]] == first[k], (k, first[k], res[k])  # not recomputed
    resumed = load(trial / "config.json").get("resumed")
    assert resumed and resumed[-1]["epochs"] == REQUEUE_EPOCHS, resumed
    text = log.read_text()  # submitit appends the second start's output to the job's log
    assert re.search(rf"\[P-1h seed 1\] resume from epoch \d/{REQUEUE_EPOCHS}", text), job_logs(jobs)
    ok(repro(cluster, "--table-only", "--results-dir", results))
    rows = load(results / "table1.json")["rows"]
    assert [(r["method"], r["epochs_done"]) for r in rows] == [("EP", [REQUEUE_EPOCHS]), ("BPTT", [REQUEUE_EPOCHS])], rows


def test_controller_down_is_refused_in_one_line(cluster, tmp_path):
    """Slurm installed, its controller not running (a copy of the config with a port nothing listens
    on): one line naming the cause, a non-zero exit, and nothing written."""
    down = tmp_path / "down.conf"
    down.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", f"SlurmctldPort={free_port()}", cluster.conf.read_text()))
    env = dict(ENV, SLURM_CONF=str(down))
    ping = subprocess.run([which("scontrol"), "ping"], env=env, capture_output=True, text=True, timeout=60)
    assert "DOWN" in ping.stdout, ping.stdout  # the premise: sbatch would find no controller
    results = tmp_path / "out"
    t0 = time.monotonic()
    proc = repro(cluster, "--presets", "P-1h", "--seeds", 1, 2, "--epochs", 2, *SLURM, "--data-dir", DATA,
                 "--results-dir", results, env=env)
    took = time.monotonic() - t0
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce.py: "), proc.stderr
    assert re.search(r"controller|slurmctld", lines[0], re.I), lines[0]
    assert not results.exists() or not any(results.iterdir()), sorted(map(str, results.rglob("*")))
    assert took < 60, took
