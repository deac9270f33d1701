"""Reproduce Table 1 of Ernoult et al. (NeurIPS 2019): a sweep of `main.py` training runs over
presets x seeds that survives kills and several sittings, run locally or on Slurm (submitit), and
aggregated into DIR/table1.json, table1.md and table1.png.

    python reproduce.py --presets P-1h EB-1h --seeds 1 2 3 4 5 --workers 2 --results-dir DIR
    python reproduce.py --presets P-2h --seeds 1 2 3 4 5 --results-dir DIR --executor slurm \\
                        --slurm-partition gpu --slurm-time 600 --slurm-gpus 1 --device-label 0
    python reproduce.py --table-only --results-dir DIR

Every flag this script does not know is a main.py training flag and is passed through to every
run.  main.py is used only through its command line, and its result folders are only read as files.
"""
import argparse
import ctypes
import dataclasses
import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import selectors
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections import deque
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent
MAIN = REPO / "main.py"

# ------------------------------------------------------------------------------------------------
# The paper's numbers (the only copy in the code).
# Ernoult, Grollier, Querlioz, Bengio, Scellier: "Updates of Equilibrium Prop Match Gradients of
# Backprop Through Time in an RNN with Static Input", NeurIPS 2019, Table 1: MNIST test error in %,
# mean ± std over 5 trials, after `epochs` epochs (the preset's epoch count).

@dataclasses.dataclass(frozen=True)
class PaperRow:
    epochs: int
    test: dict  # method -> (mean, std)


PAPER_TABLE1 = {
    "EB-1h": PaperRow(30, {"EP": (2.06, 0.17), "BPTT": (2.11, 0.09)}),
    "EB-2h": PaperRow(50, {"EP": (2.01, 0.21), "BPTT": (2.02, 0.10)}),
    "P-1h": PaperRow(30, {"EP": (2.00, 0.13), "BPTT": (2.00, 0.12)}),
    "P-2h": PaperRow(50, {"EP": (1.95, 0.10), "BPTT": (2.09, 0.12)}),
    "P-3h": PaperRow(100, {"EP": (2.01, 0.18), "BPTT": (2.30, 0.17)}),
    "P-conv": PaperRow(40, {"EP": (1.02, 0.04), "BPTT": (0.88, 0.06)}),
}
PAPER_CITATION = "Ernoult et al. (NeurIPS 2019), Table 1, 5 trials"
# presets that are variants of a paper row and are compared with it
PAPER_ALIASES = {"P-1h-T30K10": "P-1h"}
TABLE1_ORDER = ["EB-1h", "EB-2h", "P-1h", "P-1h-T30K10", "P-2h", "P-3h", "P-conv"]

# main.py flags the runner sets itself, or that make no sense in a Table-1 sweep
RESERVED_FLAGS = {
    "--preset": "the runner sets it from --presets",
    "--seed": "the runner sets it from --seeds",
    "--results-dir": "the runner gives each run its own folder under --results-dir",
    "--resume": "the runner resumes unfinished runs by itself",
    "--list-presets": "it is not a training flag",
    "--action": "Table-1 runs are train runs",
}
# Flags that change how a run is executed, not what it computes: passed to every new run but not
# part of the sweep's identity (folder names, sweep.json, the table's "flags").
RUNTIME_FLAGS = ("--data-dir", "--device-label", "--threads", "--quiet")
EPOCH_LINE = re.compile(r"^epoch \d+/\d+")


class UsageError(Exception):
    """Bad input: one line on stderr, exit code 2, nothing written."""


# ------------------------------------------------------------------------------------------------
# Runs: what to run and where

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One main.py training run of the sweep.  Picklable: it travels to Slurm jobs."""
    preset: str
    seed: int
    flags: tuple   # identity flags, canonical (sorted, last one wins), passed to main.py
    folder: Path   # this run's own --results-dir: DIR/runs/<preset>[__<tag>]/seed-<s>
    runtime: tuple = ()  # execution-only flags (RUNTIME_FLAGS), passed to new runs

    @property
    def label(self):
        return f"{self.preset} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run folder holds.  kind: new | resume | done | diverged | ambiguous."""
    kind: str
    trial: Optional[Path] = None
    epochs_done: int = 0
    epochs_target: Optional[int] = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended in this sitting.  status: done | diverged | failed | busy."""
    label: str
    status: str
    message: str = ""


def group_flags(tokens):
    """main.py flags as [(name, [values])]; `--x=v` is split.  A token that does not start with
    `--` is a value of the flag before it (negative numbers included)."""
    groups = []
    for tok in tokens:
        if tok.startswith("--"):
            name, eq, val = tok.partition("=")
            groups.append((name, [val] if eq else []))
        elif groups:
            groups[-1][1].append(tok)
        else:
            raise UsageError(f"unexpected argument {tok!r}")
    return groups


def canonical(groups):
    """Sorted by flag name, the last occurrence winning (argparse's rule for main.py's flags), so
    that the same experiment written in another order is the same sweep."""
    last = dict(groups)
    return tuple(t for name in sorted(last) for t in [name, *last[name]])


def flags_tag(flags):
    """A folder-name tag for a flag set: readable, and unique through a hash of the full text."""
    if not flags:
        return ""
    text = " ".join(flags)
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("--", "")).strip("_")[:48]
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def run_folder(results_dir, preset, seed, flags):
    tag = flags_tag(flags)
    return Path(results_dir) / "runs" / (f"{preset}__{tag}" if tag else preset) / f"seed-{seed}"


def show_flags(flags):
    return " ".join(flags) if flags else "(none)"


# ------------------------------------------------------------------------------------------------
# Run folders: main.py writes <folder>/<model name>/<device>-<date>/Trial-<k>/; the date is the
# day the run started, so a run is found by globbing, never by rebuilding the name.

def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def has_progress(trial):
    """A Trial counts once an epoch was saved (checkpoint.pt), or once it diverged (results.json
    with "diverged" is written even when the first epoch diverges, before any checkpoint)."""
    if (trial / "checkpoint.pt").is_file():
        return True
    res = read_json(trial / "results.json")
    return isinstance(res, dict) and "diverged" in res


def trials_of(folder):
    return sorted(p for p in Path(folder).glob("*/*/Trial-*") if p.is_dir())


def inspect_run(folder):
    """Read-only: the state of a run folder (stale Trials without progress are ignored)."""
    live = [t for t in trials_of(folder) if has_progress(t)]
    if not live:
        return RunState("new")
    if len(live) > 1:
        return RunState("ambiguous", note="several Trial folders with progress: " + ", ".join(map(str, live)))
    trial = live[0]
    res = read_json(trial / "results.json") or {}
    cfg = read_json(trial / "config.json") or {}
    target = (cfg.get("args") or {}).get("epochs")
    done = int(res.get("epochs_done", 0))
    if "diverged" in res:
        return RunState("diverged", trial, done, target, str(res["diverged"]))
    if target is not None and done >= target:
        return RunState("done", trial, done, target)
    return RunState("resume", trial, done, target)


def discard_stale(folder):
    """Remove Trials without progress (killed before the end of their first epoch).  Only under the
    run's lock: a live run in its first epoch has no checkpoint yet either."""
    stale = [t for t in trials_of(folder) if not has_progress(t)]
    for t in stale:
        shutil.rmtree(t, ignore_errors=True)
    return stale


def try_lock(folder):
    """An exclusive, non-blocking lock on a run folder (its file object), or None when another
    runner or job holds it.  Children inherit the descriptor, so the lock lives as long as the
    main.py process even if its runner was killed."""
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def prepare(spec):
    """Under the lock: discard stale Trials, then the run's state."""
    for t in discard_stale(spec.folder):
        say(spec, f"discarded {t} (no checkpoint: killed before its first epoch ended)")
    return inspect_run(spec.folder)


def skip_outcome(spec, state):
    """The outcome of a run that needs no process in this sitting, or None."""
    if state.kind == "done":
        return Outcome(spec.label, "done", f"already done ({state.epochs_done}/{state.epochs_target} epochs)")
    if state.kind == "diverged":
        return Outcome(spec.label, "diverged", f"diverged in an earlier sitting, not rerun: {state.note}")
    if state.kind == "ambiguous":
        return Outcome(spec.label, "failed", state.note)
    return None


def main_command(spec, state):
    """A new run, or `main.py --resume` (which takes only --resume and --quiet)."""
    if state.kind == "resume":
        return [sys.executable, str(MAIN), "--resume", str(state.trial), "--quiet"]
    return [sys.executable, str(MAIN), "--preset", spec.preset, "--seed", str(spec.seed),
            "--results-dir", str(spec.folder), *spec.flags, *spec.runtime, "--quiet"]


def child_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                MPLBACKEND="Agg", PYTHONUNBUFFERED="1")


def child_preexec():
    """For Popen(preexec_fn=...): the main.py child dies with its parent (Linux prctl), so a killed
    runner or job leaves no orphan training into its folder; it ignores SIGUSR1/2, Slurm's
    preemption signals, which are the parent's (submitit's) to handle."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork
    except (OSError, AttributeError):
        prctl = None
    parent = os.getpid()

    def preexec():
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)
        for s in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(s, signal.SIG_IGN)
    return preexec


def start_main(spec, state, threads, lock, **popen):
    return subprocess.Popen(main_command(spec, state), cwd=REPO, env=child_env(threads),
                            preexec_fn=child_preexec(), pass_fds=(lock.fileno(),), **popen)


def forget_refused(spec):
    """main.py refused a new run's flags (exit 2: nothing written): remove the runner's own files
    of that run, so that the folder is not taken for a run of this sweep (and a corrected command
    into the same results dir is not refused as another sweep)."""
    shutil.rmtree(spec.folder, ignore_errors=True)
    for d in (spec.folder.parent, spec.folder.parent.parent):  # runs/<preset>[__tag], runs
        try:
            d.rmdir()
        except OSError:  # not empty
            break


def conclude(spec, rc, last_line=""):
    """The outcome of a finished main.py process, checked against what it left on disk."""
    if rc == 2 and not trials_of(spec.folder):
        forget_refused(spec)
        return Outcome(spec.label, "failed", f"main.py refused the run: {last_line}")
    after = inspect_run(spec.folder)
    if rc == 3:
        return Outcome(spec.label, "diverged", after.note or last_line)
    if rc != 0:
        how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        return Outcome(spec.label, "failed", f"{how}: {last_line}" if last_line else how)
    if after.kind == "done":
        return Outcome(spec.label, "done", f"{after.epochs_done}/{after.epochs_target} epochs")
    return Outcome(spec.label, "failed", f"main.py exited 0 but the folder holds {after.epochs_done}/"
                                         f"{after.epochs_target} epochs ({after.kind})")


def stop_child(proc, grace=5.0):
    """SIGTERM, then SIGKILL.  Not SIGINT: a child started from a background shell ignores it.
    Stopping mid-epoch loses only that epoch (checkpoints are replaced atomically)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def say(spec, msg):
    print(f"[{spec.label}] {msg}", flush=True)


def announce(spec, state):
    if state.kind == "resume":
        say(spec, f"resume from epoch {state.epochs_done}/{state.epochs_target}: {state.trial}")
    else:
        say(spec, f"start: {spec.folder}")


# ------------------------------------------------------------------------------------------------
# --executor local: up to `workers` main.py processes at once, read through one selector in the
# main thread (no threads: preexec_fn is only safe without them, and PR_SET_PDEATHSIG follows the
# thread that forked).

@dataclasses.dataclass
class Running:
    spec: RunSpec
    proc: subprocess.Popen
    lock: object
    log: object
    buf: bytes = b""
    last: str = ""
    t0: float = 0.0


def start_local(spec, threads):
    """Start a run's process, or return its Outcome when it needs none."""
    lock = try_lock(spec.folder)
    if lock is None:
        return Outcome(spec.label, "busy", "its folder is locked by another reproduce.py or job")
    state = prepare(spec)
    skipped = skip_outcome(spec, state)
    if skipped is not None:
        lock.close()
        return skipped
    announce(spec, state)
    log = open(spec.folder / "runner.log", "ab")
    cmd = main_command(spec, state)
    log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(cmd)}\n".encode())
    proc = start_main(spec, state, threads, lock, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    return Running(spec, proc, lock, log, t0=time.monotonic())


def feed(run, chunk):
    """Log every line; show epoch lines with the run's id."""
    run.log.write(chunk)
    run.buf += chunk
    *lines, run.buf = run.buf.split(b"\n")
    for raw in lines:
        line = raw.decode(errors="replace").rstrip()
        if line:
            run.last = line
        if EPOCH_LINE.match(line):
            say(run.spec, re.sub(r"^(epoch \d+/\d+)\s+", r"\1 ", line))


def finish_local(run):
    if run.buf:
        feed(run, b"\n")
    rc = run.proc.wait()
    run.log.close()
    outcome = conclude(run.spec, rc, run.last)
    run.lock.close()
    report(outcome, f"{time.monotonic() - run.t0:.0f} s")
    return outcome


def report(outcome, extra=""):
    word = {"done": "done", "diverged": "DIVERGED", "failed": "FAILED", "busy": "BUSY"}[outcome.status]
    detail = "; ".join(x for x in (outcome.message, extra) if x)
    print(f"[{outcome.label}] {word}" + (f": {detail}" if detail else ""), flush=True)


def run_local(specs, workers, threads):
    queue, running, outcomes = deque(specs), {}, []
    sel = selectors.DefaultSelector()
    try:
        while queue or running:
            while queue and len(running) < workers:
                started = start_local(queue.popleft(), threads)
                if isinstance(started, Outcome):
                    report(started)
                    outcomes.append(started)
                else:
                    sel.register(started.proc.stdout, selectors.EVENT_READ, started)
                    running[started.proc.pid] = started
            for key, _ in sel.select(timeout=1.0):
                run = key.data
                chunk = os.read(run.proc.stdout.fileno(), 1 << 16)
                if chunk:
                    feed(run, chunk)
                    continue
                sel.unregister(run.proc.stdout)
                del running[run.proc.pid]
                outcomes.append(finish_local(run))
    finally:  # interrupted: no child may outlive the runner and race a later sitting
        for run in running.values():
            stop_child(run.proc)
            run.log.close()
            run.lock.close()
        sel.close()
    return outcomes


# ------------------------------------------------------------------------------------------------
# --executor slurm (and submitit-local, its tested stand-in): one submitit job per run, as an array

class RunJob:
    """The job function: new-or-resume of one run, as the local executor does it.  submitit calls
    `checkpoint` on preemption or timeout and requeues what it returns: the same call, which finds
    the run's last checkpoint and continues with `main.py --resume`."""

    def __call__(self, spec, threads):
        lock = try_lock(spec.folder)
        if lock is None:
            return Outcome(spec.label, "busy", "its folder is locked by another job or reproduce.py")
        with lock:
            state = prepare(spec)
            skipped = skip_outcome(spec, state)
            if skipped is None:
                announce(spec, state)
                proc = start_main(spec, state, threads, lock)  # output goes to this job's log
                try:
                    rc = proc.wait()
                finally:  # a preemption (SystemExit from submitit's handler) must not leave it running
                    stop_child(proc)
                skipped = conclude(spec, rc, "see this job's log")
        report(skipped)
        if skipped.status == "failed":
            raise RuntimeError(f"{spec.label}: {skipped.message}")
        return skipped

    def checkpoint(self, spec, threads):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, spec, threads)


def make_executor(kind, folder, opts):
    """An AutoExecutor for "slurm" or "local" (submitit's LocalExecutor) with the same parameters,
    so that the tests' local jobs go through the code the cluster uses."""
    import submitit
    cluster = "slurm" if kind == "slurm" else "local"
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster,
                               slurm_max_num_timeout=opts.slurm_max_requeues,
                               local_max_num_timeout=opts.slurm_max_requeues)
    # jobs unpickle reproduce.RunJob: the repository must be importable wherever they start
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    params = dict(name="ep-table1", timeout_min=opts.slurm_time, cpus_per_task=opts.slurm_cpus,
                  mem_gb=opts.slurm_mem or None, gpus_per_node=opts.slurm_gpus or None,
                  slurm_partition=opts.slurm_partition, slurm_setup=setup, local_setup=setup,
                  slurm_array_parallelism=opts.slurm_array_parallelism or None)
    ex.update_parameters(**params)
    return ex


def submit(kind, specs, threads, results_dir, opts):
    log_dir = results_dir / ("slurm" if kind == "slurm" else "submitit-local")
    ex = make_executor(kind, log_dir, opts)
    job_fn = RunJob()
    with ex.batch():  # one array job on Slurm
        jobs = [ex.submit(job_fn, spec, threads) for spec in specs]
    for spec, job in zip(specs, jobs):
        say(spec, f"job {job.job_id}, log {job.paths.stdout}")
    print(f"{len(jobs)} job(s) submitted ({kind}); logs in {log_dir}", flush=True)
    return jobs


def wait_jobs(specs, jobs):
    outcomes = []
    for spec, job in zip(specs, jobs):
        try:
            outcome = job.result()
        except Exception as e:  # submitit re-raises the job's error with its traceback
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            outcome = Outcome(spec.label, "failed", lines[-1] if lines else type(e).__name__)
        report(outcome)
        outcomes.append(outcome)
    return outcomes


# ------------------------------------------------------------------------------------------------
# Aggregation: DIR/runs/*/seed-*/{run.json, <model>/<device>-<date>/Trial-<k>/results.json}

def mean_std(values):
    """Mean and sample std (ddof 1; None for one value)."""
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def method_series(res):
    """[(method, key suffix)] of a results.json: the main method, then the --benchmark BPTT copy."""
    main = res.get("method", "EP")
    out = [(main, "")]
    if "error_test_bptt_tab" in res:
        out.append(("BPTT" if main != "BPTT" else "BPTT (benchmark copy)", "_bptt"))
    return out


def diverged_methods(res, methods):
    """The method a "diverged" message names ("... method EP ..."), else all of them."""
    if "diverged" not in res:
        return set()
    m = re.search(r"method (\w+)", str(res["diverged"]))
    named = {m.group(1)} & set(methods) if m else set()
    return named or set(methods)


def collect(results_dir):
    """{(preset, flags): {"seeds": {seed: (results, config)}, "pending": [seeds]}} from the run folders."""
    groups = {}
    for rj in sorted(Path(results_dir).glob("runs/*/seed-*/run.json")):
        run = read_json(rj)
        if not isinstance(run, dict) or "preset" not in run or "seed" not in run:
            continue
        g = groups.setdefault((run["preset"], tuple(run.get("flags", []))), {"seeds": {}, "pending": []})
        live = [t for t in trials_of(rj.parent) if has_progress(t)]
        res = read_json(live[-1] / "results.json") if live else None
        if isinstance(res, dict):
            g["seeds"][run["seed"]] = (res, read_json(live[-1] / "config.json") or {})
        else:
            g["pending"].append(run["seed"])
    return groups


@dataclasses.dataclass(frozen=True)
class SeedCurves:
    """One seed's numbers for one method of a row."""
    test: list
    train: list
    seconds: list
    target: Optional[int]
    diverged: bool   # this method diverged
    stopped: bool    # the run stopped because a method diverged (this one or the other)
    nudging: Optional[str]


def seed_curves(res, cfg, method, sfx):
    args = cfg.get("args") or {}
    return SeedCurves(test=res.get(f"error_test{sfx}_tab") or [], train=res.get(f"error_train{sfx}_tab") or [],
                      seconds=res.get(f"seconds{sfx}_tab") or [], target=args.get("epochs"),
                      diverged=method in diverged_methods(res, [m for m, _ in method_series(res)]),
                      stopped="diverged" in res, nudging=None if args.get("nudging") is None else str(args["nudging"]))


def make_row(preset, flags, method, sfx, seeds):
    """One table row: a (preset, flags, method) over the seeds that have an epoch of it or whose
    run diverged (a divergence in epoch 1 leaves no number, but belongs in the table)."""
    per = {s: c for s, (res, cfg) in sorted(seeds.items())
           if (c := seed_curves(res, cfg, method, sfx)).test or c.stopped}
    if not per:
        return None
    with_numbers = [c for c in per.values() if c.test]
    nudging = sorted({c.nudging for c in per.values() if c.nudging is not None})
    paper_key = PAPER_ALIASES.get(preset, preset)
    paper = PAPER_TABLE1.get(paper_key)
    p_mean, p_std = paper.test.get(method.split()[0], (None, None)) if paper else (None, None)
    longest = max((len(c.test) for c in per.values()), default=0)
    curve = [mean_std([c.test[e] for c in with_numbers if len(c.test) > e]) for e in range(longest)]
    row = dict(preset=preset, method=method, flags=list(flags), seeds=list(per), n_seeds=len(per),
               epochs_done=[len(c.test) for c in per.values()],
               epochs_target=max((c.target for c in per.values() if c.target is not None), default=None))
    row["complete"] = row["epochs_target"] is not None and min(row["epochs_done"]) >= row["epochs_target"]
    row["diverged"] = [s for s, c in per.items() if c.diverged]
    row["stopped_by_divergence"] = [s for s, c in per.items() if c.stopped and not c.diverged
                                    and (c.target is None or len(c.test) < c.target)]
    (row["final_test_error_mean"], row["final_test_error_std"]) = mean_std([c.test[-1] for c in with_numbers])
    (row["final_train_error_mean"], row["final_train_error_std"]) = mean_std([c.train[-1] for c in with_numbers if c.train])
    (row["best_test_error_mean"], row["best_test_error_std"]) = mean_std([min(c.test) for c in with_numbers])
    secs = [statistics.mean(c.seconds) for c in per.values() if c.seconds]
    row.update(paper_row=paper_key if paper else None, paper_epochs=paper.epochs if paper else None,
               paper_test_error_mean=p_mean, paper_test_error_std=p_std,
               seconds_per_epoch_mean=statistics.mean(secs) if secs else None,
               nudging=(nudging[0] if len(nudging) == 1 else nudging or None),
               test_error_curve_mean=[m for m, _ in curve], test_error_curve_std=[s for _, s in curve])
    return row


def preset_order(preset):
    return (TABLE1_ORDER.index(preset), "") if preset in TABLE1_ORDER else (len(TABLE1_ORDER), preset)


def build_table(results_dir):
    groups = collect(results_dir)
    rows, pending = [], []
    for (preset, flags) in sorted(groups, key=lambda k: (preset_order(k[0]), k[1])):
        g = groups[(preset, flags)]
        methods = []
        for res, _ in g["seeds"].values():
            methods += [m for m in method_series(res) if m not in methods]
        for method, sfx in sorted(methods, key=lambda m: (m[0] != "EP", m[0])):
            row = make_row(preset, flags, method, sfx, g["seeds"])
            if row:
                rows.append(row)
        if g["pending"]:
            pending.append(dict(preset=preset, flags=list(flags), seeds=sorted(g["pending"])))
    return {"source": PAPER_CITATION, "std": "sample standard deviation over seeds (ddof 1); null for one seed",
            "errors": "percent, at each seed's last finished epoch", "rows": rows, "pending": pending}


def atomic_write(path, write):
    """write(tmp_path) then os.replace: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def fmt(mean, std=None, digits=2):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown(table):
    head = ["# Table 1 reproduction", "",
            f"MNIST error in % at each seed's last finished epoch: mean ± sample std (ddof 1) over seeds. "
            f"Paper: {table['source']}; P-1h-T30K10 is compared with the paper's P-1h row.", "",
            "| preset | flags | method | n seeds | epochs | final test error | train error | best test | paper test | s/epoch | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        done = sorted(set(r["epochs_done"]))
        epochs = f"{'–'.join(map(str, (done[0], done[-1]) if len(done) > 1 else done))}/{r['epochs_target']}"
        notes = []
        short = [f"seed {s} at {e}" for s, e in zip(r["seeds"], r["epochs_done"]) if e < (r["epochs_target"] or 0)]
        if short:
            notes.append("unfinished: " + ", ".join(short))
        if r["diverged"]:
            notes.append("diverged: seed " + ", ".join(map(str, r["diverged"])))
        if r["stopped_by_divergence"]:
            notes.append("stopped by the other method's divergence: seed " + ", ".join(map(str, r["stopped_by_divergence"])))
        if r["nudging"]:
            notes.append(f"nudging {r['nudging']}")
        flags = f"`{' '.join(r['flags'])}`" if r["flags"] else "–"
        secs = f"{r['seconds_per_epoch_mean']:.1f}" if r["seconds_per_epoch_mean"] is not None else "–"
        head.append(f"| {r['preset']} | {flags} | {r['method']} | {r['n_seeds']} | {epochs} | "
                    f"{fmt(r['final_test_error_mean'], r['final_test_error_std'])} | "
                    f"{fmt(r['final_train_error_mean'], r['final_train_error_std'])} | {fmt(r['best_test_error_mean'])} | "
                    f"{fmt(r['paper_test_error_mean'], r['paper_test_error_std'])} | {secs} | {'; '.join(notes)} |")
    for p in table["pending"]:
        head.append(f"\nNo finished epoch yet: {p['preset']} (flags {show_flags(p['flags'])}), seeds {p['seeds']}.")
    return "\n".join(head) + "\n"


def plot_panel(ax, preset, flags, rows):
    """Test error per epoch for each method of one (preset, flags): mean over seeds ± 1 sample std,
    and the paper's mean ± std at its final epoch (at the last epoch shown for shorter runs)."""
    from matplotlib import ticker
    colors = {"EP": "tab:blue", "BPTT": "tab:orange"}
    last = max([len(r["test_error_curve_mean"]) for r in rows] + [1])
    for i, r in enumerate(rows):
        c = colors.get(r["method"], "tab:green")
        mean = r["test_error_curve_mean"]  # empty when every seed diverged in its first epoch
        std = [s or 0.0 for s in r["test_error_curve_std"]]
        x = list(range(1, len(mean) + 1))
        label = f"{r['method']} ({r['n_seeds']} seed{'s' * (r['n_seeds'] > 1)}"
        label += f", {len(r['diverged'])} diverged)" if r["diverged"] else ")"
        ax.plot(x, mean, "-o", ms=3, color=c, label=label)
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=c, alpha=0.2, lw=0)
        if r["paper_test_error_mean"] is not None:
            px = min(r["paper_epochs"], last) + 0.04 * last * (i - (len(rows) - 1) / 2)  # side by side
            ax.errorbar([px], [r["paper_test_error_mean"]], yerr=[r["paper_test_error_std"] or 0], fmt="*",
                        ms=11, color=c, mec="black", capsize=3, label=f"paper {r['method']} ({r['paper_epochs']} ep.)")
    ax.set_xlim(0.5, last + 0.5)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))  # labels 1, 2, 5, 10, 20, 50
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_title("\n".join([preset] + textwrap.wrap(" ".join(flags), 60)), fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def plot(table, path):
    """table1.png: a panel per (preset, flags)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {}
    for r in table["rows"]:
        panels.setdefault((r["preset"], tuple(r["flags"])), []).append(r)
    cols = min(3, max(len(panels), 1))
    nrows = math.ceil(max(len(panels), 1) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4 * nrows), squeeze=False)
    for ax, ((preset, flags), rows) in zip(axes.flat, panels.items()):
        plot_panel(ax, preset, flags, rows)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def aggregate(results_dir):
    table = build_table(results_dir)
    atomic_write(results_dir / "table1.json", lambda t: t.write_text(json.dumps(table, indent=1) + "\n"))
    md = markdown(table)
    atomic_write(results_dir / "table1.md", lambda t: t.write_text(md))
    plot(table, results_dir / "table1.png")
    return md


# ------------------------------------------------------------------------------------------------
# Command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(message)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every real default; flags without one say in their help what their absence means."""
    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


EPILOG = """\
Any other flag is a main.py training flag (python main.py --help), passed to every run and winning
over the preset, e.g. --epochs 1 --train-subset 2000 --T 8 --Kmax 3, or --nudging symmetric
--no-benchmark.  --data-dir, --device-label, --threads and --quiet change only how a run executes:
they are passed to new runs but are not part of the sweep's identity (its folders, sweep.json and the
table's flags).  A results dir holds one set of the other flags.

Re-running the same command skips finished runs and resumes unfinished ones (main.py --resume).
Exit codes: 0 ok (diverged runs are reported and kept in the table), 1 a run failed, 2 bad input
(nothing written), 130 interrupted."""


def make_parser():
    p = _Parser(prog="reproduce.py", allow_abbrev=False, formatter_class=_Formatter,
                description=__doc__.split("\n\n")[0],
                epilog=EPILOG)
    a = p.add_argument
    a("--presets", nargs="+", metavar="NAME",
      help="Table-1 presets of main.py (python main.py --list-presets); required unless --table-only")
    a("--seeds", nargs="+", type=int, metavar="S", help="one run per seed and preset; required unless --table-only")
    a("--results-dir", default="results/table1", metavar="DIR",
      help="the sweep's folder: runs/, sweep.json, table1.json/.md/.png")
    a("--table-only", action="store_true", help="aggregate what is in --results-dir, run nothing")
    a("--executor", choices=["local", "slurm", "submitit-local"], default="local",
      help="local: processes on this machine; slurm: submit an array job through submitit and return; "
           "submitit-local: submitit's LocalExecutor (real subprocess jobs, all at once), waits (for testing)")
    a("--workers", type=int, default=1, metavar="N", help="local: runs at once (capped so that workers x threads <= cores)")
    a("--threads-per-run", type=int, default=None, metavar="N",
      help="OMP/MKL threads of each run (default: cores // workers locally, --slurm-cpus with submitit)")
    g = p.add_argument_group("slurm (--executor slurm or submitit-local)")
    g.add_argument("--slurm-partition", default=None, metavar="NAME", help="partition (default: the cluster's default)")
    g.add_argument("--slurm-time", type=int, default=1440, metavar="MINUTES",
                   help="time limit per job; a job that reaches it requeues and resumes from its last epoch")
    g.add_argument("--slurm-cpus", type=int, default=2, metavar="N", help="CPUs per job")
    g.add_argument("--slurm-gpus", type=int, default=0, metavar="N",
                   help="GPUs per job (pass --device-label 0 so that main.py uses it)")
    g.add_argument("--slurm-mem", type=float, default=16, metavar="GB", help="memory per job (0: the cluster's default)")
    g.add_argument("--slurm-array-parallelism", type=int, default=0, metavar="N",
                   help="jobs of the array running at once (0: submitit's default, 256)")
    g.add_argument("--slurm-max-requeues", type=int, default=20, metavar="N",
                   help="timeouts after which a job is not requeued any more (preemptions do not count)")
    return p


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ask_main(args):
    """Run `main.py args` for a quick answer (--help, --list-presets); UsageError with main.py's line
    if it refuses."""
    p = subprocess.run([sys.executable, str(MAIN), *args], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, MPLBACKEND="Agg"), timeout=120)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()] or [f"exit {p.returncode}"]
        raise UsageError(f"main.py refused the extra flags: {lines[-1]}")
    return p.stdout


def main_flag_names():
    return set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", ask_main(["--help"])))


def train_presets(extra):
    """main.py's train presets, from `--list-presets` (a line per preset: name, title, command).
    The extra flags ride along, so that main.py's own parser checks their syntax and types."""
    out = ask_main([*extra, "--list-presets"])
    return {ln.split()[0] for ln in out.splitlines() if ln.strip() and "--action train" in ln}


def split_extra(extra, known, user_cwd):
    """The extra tokens as (identity flags, runtime flags), both canonical; refuses flags the
    runner owns and abbreviations (main.py would take --res for --results-dir)."""
    groups = group_flags(extra)
    for name, _ in groups:
        if name in RESERVED_FLAGS:
            raise UsageError(f"{name} cannot be passed through: {RESERVED_FLAGS[name]}")
        if name not in known:
            raise UsageError(f"{name}: neither a reproduce.py flag nor a main.py flag (write flags in full; "
                             "see --help and python main.py --help)")
    runtime = [(n, v) for n, v in groups if n in RUNTIME_FLAGS and n != "--quiet"]
    # a relative --data-dir means the user's directory; runs start in the repository
    runtime = [(n, [str((user_cwd / v[0]).resolve())] if n == "--data-dir" and len(v) == 1 else v) for n, v in runtime]
    return canonical([g for g in groups if g[0] not in RUNTIME_FLAGS]), canonical(runtime)


def check_list(name, values):
    if not values:
        raise UsageError(f"--{name}: give at least one")
    dup = sorted({v for v in values if values.count(v) > 1}, key=str)
    if dup:
        raise UsageError(f"--{name}: duplicate {', '.join(map(str, dup))}")


def check_writable(path):
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        raise UsageError(f"--results-dir {path}: not writable")


def check_manifest(results_dir, flags):
    """A results dir holds one flag set: a sweep with other flags would mix rows that differ in
    what they ran."""
    man = read_json(results_dir / "sweep.json")
    if not any(results_dir.glob("runs/*/seed-*/run.json")):
        return None  # no runs (e.g. every one was refused by main.py): nothing to mix with
    if isinstance(man, dict) and tuple(man.get("flags", [])) != tuple(flags):
        raise UsageError(f"--results-dir {results_dir} holds a sweep with flags [{show_flags(man['flags'])}], "
                         f"this call has [{show_flags(flags)}]: use another --results-dir")
    return man if isinstance(man, dict) else None


def write_manifest(results_dir, man, flags, runtime, specs):
    runs = {k: set(v) for k, v in (man or {}).get("runs", {}).items()}
    for s in specs:
        runs.setdefault(s.preset, set()).add(s.seed)
    new = dict(flags=list(flags), runtime_flags=list(runtime), runs={k: sorted(v) for k, v in sorted(runs.items())},
               created=(man or {}).get("created") or datetime.datetime.now().isoformat(timespec="seconds"),
               updated=datetime.datetime.now().isoformat(timespec="seconds"))
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(results_dir / "sweep.json", lambda t: t.write_text(json.dumps(new, indent=1) + "\n"))


def write_run_record(spec):
    """run.json: what the runner asked of this folder, for the table (a Trial's own files do not
    say which preset and which pass-through flags made it)."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    rec = dict(preset=spec.preset, seed=spec.seed, flags=list(spec.flags), runtime_flags=list(spec.runtime))
    if read_json(spec.folder / "run.json") != rec:
        atomic_write(spec.folder / "run.json", lambda t: t.write_text(json.dumps(rec, indent=1) + "\n"))


@dataclasses.dataclass(frozen=True)
class Sweep:
    results_dir: Path
    specs: tuple
    flags: tuple
    runtime: tuple
    manifest: Optional[dict]


def check_sweep(args, extra):
    """Every check before anything is written."""
    check_list("presets", args.presets)
    check_list("seeds", args.seeds)
    positive = [("--workers", args.workers), ("--slurm-time", args.slurm_time), ("--slurm-cpus", args.slurm_cpus)]
    if args.threads_per_run is not None:
        positive.append(("--threads-per-run", args.threads_per_run))
    for flag, v in positive:
        if v < 1:
            raise UsageError(f"{flag} must be >= 1 (got {v})")
    for flag, v in [("--slurm-gpus", args.slurm_gpus), ("--slurm-mem", args.slurm_mem),
                    ("--slurm-array-parallelism", args.slurm_array_parallelism),
                    ("--slurm-max-requeues", args.slurm_max_requeues)]:
        if v < 0:
            raise UsageError(f"{flag} must be >= 0 (got {v})")
    if args.executor == "slurm":
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]  # submitit needs both
        if missing:
            raise UsageError(f"--executor slurm: no Slurm on this machine ({' and '.join(missing)} not on PATH)")
    if args.executor != "local":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UsageError(f"--executor {args.executor} needs submitit (pip install submitit==1.5.4)")
    flags, runtime = split_extra(extra, main_flag_names(), Path.cwd())
    presets = train_presets(list(flags) + list(runtime))
    for p in args.presets:
        if p not in presets:
            raise UsageError(f"--presets: {p!r} is not a train preset of main.py (these are: {', '.join(sorted(presets))})")
    results_dir = Path(args.results_dir).resolve()
    check_writable(results_dir)
    man = check_manifest(results_dir, flags)
    specs = tuple(RunSpec(p, s, flags, run_folder(results_dir, p, s, flags), runtime)
                  for p in args.presets for s in args.seeds)
    return Sweep(results_dir, specs, flags, runtime, man)


def check_table_only(args, extra):
    if args.presets or args.seeds or extra:
        raise UsageError("--table-only runs nothing: give only --results-dir")
    results_dir = Path(args.results_dir).resolve()
    if not any(results_dir.glob("runs/*/seed-*/run.json")):
        raise UsageError(f"--table-only: no runs of reproduce.py in {results_dir}")
    return results_dir


def finish(results_dir, outcomes):
    """Aggregate, print the table and a summary; the exit code."""
    md = aggregate(results_dir)
    print("\n" + md, flush=True)
    count = {k: [o for o in outcomes if o.status == k] for k in ("done", "diverged", "failed", "busy")}
    print(f"{len(outcomes)} runs: {len(count['done'])} done, {len(count['diverged'])} diverged, "
          f"{len(count['failed'])} failed, {len(count['busy'])} busy; table in {results_dir}/table1.md, .json, .png",
          flush=True)
    if count["diverged"]:
        print("diverged (recorded in the table): " + ", ".join(o.label for o in count["diverged"]), flush=True)
    bad = count["failed"] + count["busy"]
    if bad:
        print(f"reproduce.py: {len(bad)} run(s) did not finish: " +
              "; ".join(f"{o.label} ({o.message})" for o in bad), file=sys.stderr, flush=True)
        return 1
    return 0


def run_sweep(args, sweep):
    write_manifest(sweep.results_dir, sweep.manifest, sweep.flags, sweep.runtime, sweep.specs)
    for spec in sweep.specs:
        write_run_record(spec)
    if args.executor == "local":
        threads = args.threads_per_run or max(1, cores() // args.workers)
        workers = max(1, min(args.workers, cores() // threads, len(sweep.specs)))
        if workers < min(args.workers, len(sweep.specs)):  # the cores, not the number of runs, limit it
            print(f"running {workers} at once ({cores()} cores, {threads} thread(s) per run)", flush=True)
        return finish(sweep.results_dir, run_local(sweep.specs, workers, threads))
    threads = args.threads_per_run or args.slurm_cpus
    if args.slurm_gpus and "--device-label" not in sweep.runtime:
        print("note: --slurm-gpus without --device-label: main.py would train on the CPU (add --device-label 0)",
              flush=True)
    todo = []
    for spec in sweep.specs:  # read-only here: the jobs discard stale Trials under their lock
        skipped = skip_outcome(spec, inspect_run(spec.folder))
        if skipped is not None and skipped.status != "failed":
            report(skipped)
        else:
            todo.append(spec)
    if not todo:
        return finish(sweep.results_dir, [])
    jobs = submit(args.executor, todo, threads, sweep.results_dir, args)
    if args.executor == "slurm":
        print(f"when they have finished: python reproduce.py --table-only --results-dir {sweep.results_dir}", flush=True)
        return 0
    return finish(sweep.results_dir, wait_jobs(todo, jobs))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = make_parser().parse_known_args(argv)
        if args.table_only:
            results_dir = check_table_only(args, extra)
        else:
            sweep = check_sweep(args, extra)
    except UsageError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        return 2
    if args.table_only:
        print(aggregate(results_dir), end="")
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # a killed sweep stops its runs cleanly too
    try:
        return run_sweep(args, sweep)
    except KeyboardInterrupt:
        print("reproduce.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Enter through the importable module, so that jobs pickle `reproduce.RunJob` by reference
    # (classes of __main__ would be pickled by value).
    import reproduce
    sys.exit(reproduce.main())
