"""Reproduce Table 1 of Ernoult et al. (NeurIPS 2019): a sweep of training runs over presets x seeds
that survives kills and several sittings, run locally (a process pool) or on Slurm (submitit), and
aggregated into DIR/table1.json, table1.md and table1.png (table1.py).

    python reproduce.py --presets P-1h EB-1h --seeds 1 2 3 4 5 --workers 2 --results-dir DIR
    python reproduce.py --presets P-2h --seeds 1 2 3 4 5 --results-dir DIR --executor slurm \\
                        --slurm-partition gpu --slurm-time 600 --slurm-gpus 1 --device-label 0
    python reproduce.py --table-only --results-dir DIR

A run is one Config (main.parse_args of the equivalent main.py command line), validated before
anything is written and run in-process by experiment.run, in a worker process or a Slurm job.
"""
import collections
import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import datetime
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import config
import experiment
import main as main_py
import results as rs
import table1

REPO = Path(__file__).resolve().parent
Outcome, UsageError = experiment.Outcome, experiment.UsageError
RESERVED = {"preset": "the runner sets it from --presets", "seed": "the runner sets it from --seeds",
            "results_dir": "each run has its own folder under --results-dir", "list_presets": "it does not train",
            "resume": "the runner resumes unfinished runs by itself", "action": "Table-1 runs are train runs"}
# Config fields that change how a run executes, not what it computes: not part of its identity
RUNTIME = ("data_dir", "device_label", "quiet", "threads")
NOT_IDENTITY = RUNTIME + ("results_dir", "resume", "explicit", "list_presets")
Sweep = collections.namedtuple("Sweep", "results_dir runs flags runtime manifest")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the sweep.  Picklable: it travels to workers and Slurm jobs."""
    preset: str
    seed: int
    flags: tuple        # the sweep's identity flags, canonical
    argv: tuple         # the equivalent main.py command line, recorded in config.json
    cfg: config.Config  # main.parse_args(argv)
    folder: Path        # cfg.results_dir
    label: str          # "<preset> seed <s>", for messages


def identity(cfg):
    """What a run computes: its Config's fields that differ from the defaults, runtime ones aside."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in NOT_IDENTITY and v != getattr(config.DEFAULTS, k)}


def flag_tokens(cfg, fields):
    """The flags that set `fields` of cfg, sorted by flag: the same experiment written in another
    order or spelling (--epochs=2, --lr-tab) gives the same tokens."""
    groups = []
    for k in fields:
        v, name = getattr(cfg, k), config.flag_name(k)
        if isinstance(v, bool):
            groups.append([name if v else "--no-" + name[2:]])
        else:
            groups.append([name, *map(str, v if isinstance(v, list) else [v])])
    return tuple(t for g in sorted(groups) for t in g)


def run_folder(results_dir, preset, seed, flags, cfg):
    """DIR/runs/<preset>__<flags>-<hash of the Config without its seed>/seed-<s>."""
    slug = "_".join(flags).replace("--", "").replace("/", "_")[:48]
    digest = hashlib.sha1(json.dumps(identity(cfg.replace(seed=None)), sort_keys=True).encode()).hexdigest()[:8]
    tag = (slug + "-" if slug else "") + digest
    return Path(results_dir) / "runs" / f"{preset}__{tag}" / f"seed-{seed}"


# A run folder holds main.py's <model>/<device>-<date>/Trial-<k>/ (found by globbing)

def has_progress(trial):
    """A Trial counts once an epoch was saved, or once it diverged (even in its first epoch)."""
    res, _ = table1.read_json(trial / "results.json")
    return (trial / "checkpoint.pt").is_file() or (
        isinstance(res, dict) and (res.get("epochs_done", 0) > 0 or "diverged" in res))


def state(run):
    """Read-only: (the Trial to resume or None, its results, the Outcome if no work is needed, or None)."""
    live = [t for t in table1.trials_of(run.folder) if has_progress(t)]
    if len(live) > 1:
        return None, {}, Outcome(run.folder, 1, {}, "several Trials with progress: " + ", ".join(map(str, live)))
    res = table1.read_json(live[0] / "results.json")[0] if live else {}
    res = res if isinstance(res, dict) else {}
    if "diverged" in res:
        return live[0], res, Outcome(live[0], 3, res, f"diverged in an earlier sitting, not rerun: {res['diverged']}")
    if live and res.get("epochs_done", 0) >= run.cfg.epochs:
        return live[0], res, Outcome(live[0], 0, res, f"already done ({res['epochs_done']}/{run.cfg.epochs} epochs)")
    return (live or [None])[0], res, None


def say(run, msg):
    print(f"[{run.label}] {msg}", flush=True)


class Job:
    """One run's work in a local worker or a Slurm job: under the folder's lock, discard Trials killed
    before their first epoch ended, then start the run, resume it from its last checkpoint, or skip it.
    On preemption or timeout submitit requeues what `checkpoint` returns: the same call, which resumes."""

    def __call__(self, run):
        out = self.work(run)
        if out.code not in (0, 3):
            raise RuntimeError(out.message or f"exit {out.code}")
        return out

    def work(self, run):
        run.folder.mkdir(parents=True, exist_ok=True)
        with open(run.folder / ".lock", "a") as lock:  # held while this process works in the folder
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Outcome(run.folder, 1, {}, "busy: its folder is locked by another runner or job")
            for t in table1.trials_of(run.folder):
                if not has_progress(t):
                    shutil.rmtree(t, ignore_errors=True)
                    say(run, f"discarded {t} (no checkpoint: killed before its first epoch ended)")
            trial, res, done = state(run)
            if done:
                return done
            say(run, f"start: {run.folder}" if trial is None else
                f"resume from epoch {res.get('epochs_done', 0)}/{run.cfg.epochs}: {trial}")
            with open(run.folder / "runner.log", "a") as logf:
                def log(*a, **_):
                    say(run, " ".join(map(str, a)))
                    print(*a, file=logf, flush=True)
                try:
                    out = experiment.run(run.cfg.replace(resume=trial and str(trial)), log=log,
                                         argv=["main.py", *run.argv])
                except UsageError as e:
                    return Outcome(run.folder, 1, {}, f"refused: {e}")
        if out.code == 0:
            out.message = f"{out.results.get('epochs_done')}/{run.cfg.epochs} epochs"
        return out

    def checkpoint(self, run):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, run)


def report(run, job=None, out=None):
    """Print how a run ended (a finished future's or Slurm job's Outcome, or its error); (run, Outcome)."""
    try:
        out = out or job.result()
    except Exception as e:  # the job's error, re-raised with its traceback: its last line
        out = Outcome(run.folder, 1, {}, (str(e).strip().splitlines() or [type(e).__name__])[-1])
    word = {0: "done", 3: "DIVERGED", 130: "INTERRUPTED"}.get(out.code, "FAILED")
    say(run, word + (f": {out.message}" if out.message else ""))
    return run, out


# Executors: one interface, submit(Job(), run), for a local process pool and for submitit's Slurm

def worker_init(parent):
    """A local worker dies with the runner (Linux): a killed sweep leaves nothing training."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_executor(args, results_dir, n_runs):
    if args.executor == "local":
        return cf.ProcessPoolExecutor(max(1, min(args.workers, n_runs)), multiprocessing.get_context("spawn"),
                                      initializer=worker_init, initargs=(os.getpid(),))
    import submitit
    ex = submitit.AutoExecutor(folder=results_dir / "slurm" / "%j", cluster="slurm",
                               slurm_max_num_timeout=args.slurm_max_requeues)
    # jobs unpickle reproduce.Job: the repository must be importable wherever they start
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    ex.update_parameters(name="ep-table1", timeout_min=args.slurm_time, cpus_per_task=args.slurm_cpus,
                         mem_gb=args.slurm_mem or None, gpus_per_node=args.slurm_gpus or None,
                         slurm_partition=args.slurm_partition, slurm_setup=setup,
                         slurm_array_parallelism=args.slurm_array_parallelism or None)
    return ex


def submit(ex, runs):
    with (ex.batch() if hasattr(ex, "batch") else contextlib.nullcontext()):  # one array job on Slurm
        return [ex.submit(Job(), run) for run in runs]


def run_local(args, sweep):
    ex = make_executor(args, sweep.results_dir, len(sweep.runs))
    try:
        jobs = dict(zip(submit(ex, sweep.runs), sweep.runs))
        return [report(jobs[j], j) for j in cf.as_completed(jobs)]
    except KeyboardInterrupt:  # stop the runs now: only the epochs in progress are lost
        for p in multiprocessing.active_children():
            p.kill()
        raise
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def run_slurm(args, sweep):
    """Submit the runs that need work as one array job and return; nothing is written when the
    submission fails."""
    outs = [state(r)[2] for r in sweep.runs]  # read-only: the jobs discard stale Trials under their lock
    todo = [r for r, out in zip(sweep.runs, outs) if not out or out.code == 1]
    for r, out in zip(sweep.runs, outs):
        if out and out.code != 1:
            report(r, out=out)
    if not todo:
        write_records(sweep)
        return finish(sweep.results_dir, [])
    slurm_dir = sweep.results_dir / "slurm"
    new_dirs = [d for d in (sweep.results_dir, slurm_dir) if not d.exists()]
    before = set(slurm_dir.iterdir()) if slurm_dir.is_dir() else set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's error, which e holds
            jobs = submit(make_executor(args, sweep.results_dir, len(todo)), todo)
    except Exception as e:  # sbatch failed (controller down, refused), or submitit could not read its answer
        for p in (set(slurm_dir.iterdir()) if slurm_dir.is_dir() else set()) - before:  # submitit's pickles
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for d in new_dirs:
            shutil.rmtree(d, ignore_errors=True)
        cause = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
        print(f"reproduce.py: error: Slurm submission failed, nothing submitted: {cause}", file=sys.stderr)
        return 1
    write_records(sweep)
    for run, job in zip(todo, jobs):
        say(run, f"job {job.job_id}, log {job.paths.stdout}")
    print(f"{len(jobs)} job(s) submitted; logs in {slurm_dir}\nwhen they have finished: "
          f"python reproduce.py --table-only --results-dir {sweep.results_dir}", flush=True)
    return 0


# The command line and the sweep's plan: every Config built and validated before anything is written

EPILOG = """\
Any other flag is a main.py training flag (python main.py --help), passed to every run and winning over
the preset, e.g. --epochs 1 --train-subset 2000 --T 8 --Kmax 3.  --data-dir, --device-label, --threads
and --quiet change only how a run executes, not its identity (its Config, hashed into its folder name).
A results dir holds one set of the other flags.  The same command again skips finished runs and resumes
unfinished ones.  Exit codes: 0 ok (diverged runs are kept in the table), 1 a run or the Slurm
submission failed, 2 bad input (nothing written), 130 interrupted."""
SLURM = [  # flag, type, default, lower bound, metavar, help
    ("--slurm-partition", str, None, None, "NAME", "partition (if not given: the cluster's default)"),
    ("--slurm-time", int, 1440, 1, "MINUTES", "time limit per job; a job that reaches it requeues and resumes"),
    ("--slurm-cpus", int, 2, 1, "N", "CPUs per job"),
    ("--slurm-gpus", int, 0, 0, "N", "GPUs per job (pass --device-label 0 so that the runs use it)"),
    ("--slurm-mem", float, 16, 0, "GB", "memory per job (0: the cluster's default)"),
    ("--slurm-array-parallelism", int, 0, 0, "N", "jobs of the array running at once (0: submitit's default, 256)"),
    ("--slurm-max-requeues", int, 20, 0, "N", "timeouts after which a job is not requeued (preemptions do not count)"),
]


def make_parser():
    p = main_py._Parser(prog="reproduce.py", allow_abbrev=False, formatter_class=main_py._HelpFormatter,
                        description=__doc__.split("\n\n")[0], epilog=EPILOG)
    a = p.add_argument
    a("--presets", nargs="+", metavar="NAME", help="train presets (python main.py --list-presets); needed to run")
    a("--seeds", nargs="+", type=int, metavar="S", help="one run per seed and preset; needed to run")
    a("--results-dir", default="results/table1", metavar="DIR", help="the sweep: runs/, sweep.json, table1.*")
    a("--table-only", action="store_true", help="aggregate what is in --results-dir, run nothing")
    a("--executor", choices=["local", "slurm"], default="local",
      help="local: a pool of --workers processes, waits; slurm: submits one array job through submitit, returns")
    a("--workers", type=int, default=1, metavar="N", help="local: runs at once")
    a("--threads-per-run", type=int, metavar="N", help="= main.py's --threads (if neither: 1, or --slurm-cpus)")
    g = p.add_argument_group("slurm (--executor slurm)")
    for flag, kind, default, _, metavar, help in SLURM:
        g.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)
    return p


def check_args(args):
    for name in ("presets", "seeds"):
        values = getattr(args, name)
        if not values:
            raise UsageError(f"--{name}: give at least one")
        dup = sorted({v for v in values if values.count(v) > 1}, key=str)
        if dup:
            raise UsageError(f"--{name}: duplicate {', '.join(map(str, dup))}")
    for flag, _, _, lo, _, _ in SLURM + [("--workers", 0, 0, 1, 0, 0), ("--threads-per-run", 0, 0, 1, 0, 0)]:
        v = getattr(args, flag[2:].replace("-", "_"))
        if lo is not None and v is not None and v < lo:
            raise UsageError(f"{flag} must be >= {lo} (got {v})")
    trains = sorted(k for k, p in config.PRESETS.items() if p.flags.get("action") == "train")
    for p in args.presets:
        if p not in trains:
            raise UsageError(f"--presets: {p!r} is not a train preset (these are: {', '.join(trains)})")
    if args.executor == "slurm":
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]  # submitit needs both
        if missing:
            raise UsageError(f"--executor slurm: no Slurm on this machine ({' and '.join(missing)} not on PATH)")


def plan(args, extra):
    """Every check before anything is written; the sweep's runs as validated Configs."""
    check_args(args)
    given = main_py.parse_args(extra)  # the pass-through flags alone: which Config fields they set
    reserved = sorted(set(given.explicit) & RESERVED.keys())
    if reserved:
        raise UsageError(f"{config.flag_name(reserved[0])} cannot be passed through: {RESERVED[reserved[0]]}")
    flags = flag_tokens(given, sorted(set(given.explicit) - set(RUNTIME)))
    results_dir = Path(args.results_dir).resolve()
    # a relative --data-dir is the user's; main.py's default (./data) is the repository's
    data_dir = ((Path.cwd() if "data_dir" in given.explicit else REPO) / given.data_dir).resolve()
    threads = given.threads or args.threads_per_run or (args.slurm_cpus if args.executor == "slurm" else 1)
    execution = ["--quiet", "--data-dir", str(data_dir), "--threads", str(threads)]
    runs = []
    for preset in args.presets:
        for seed in args.seeds:
            argv = ["--preset", preset, "--seed", str(seed), *extra, *execution]
            folder = run_folder(results_dir, preset, seed, flags, main_py.parse_args(argv))
            argv += ["--results-dir", str(folder)]
            cfg = main_py.parse_args(argv)  # validated; on Slurm the device is the job's, not this machine's
            experiment.validate(cfg.replace(device_label=-1) if args.executor == "slurm" else cfg)
            runs.append(Run(preset, seed, flags, tuple(argv), cfg, folder, f"{preset} seed {seed}"))
    runtime = flag_tokens(runs[0].cfg, sorted(set(given.explicit) & {"data_dir", "device_label", "threads"}))
    man, _ = table1.read_json(results_dir / "sweep.json")
    man = man if isinstance(man, dict) and table1.has_runs(results_dir) else {}
    if man and tuple(man.get("flags", [])) != flags:
        raise UsageError(f"--results-dir {results_dir} holds a sweep with flags [{table1.show_flags(man['flags'])}], "
                         f"this call has [{table1.show_flags(flags)}]: use another --results-dir")
    return Sweep(results_dir, tuple(runs), flags, runtime, man)


def write_records(sweep):
    """DIR/sweep.json (the sweep's flags, the presets and seeds asked for so far) and each run's
    run.json (what the table reads: a Trial's own files do not say which sweep row made it)."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    old = sweep.manifest.get("runs", {})
    runs = {p: sorted(set(old.get(p, [])) | {r.seed for r in sweep.runs if r.preset == p})
            for p in sorted({*old, *(r.preset for r in sweep.runs)})}
    sweep.results_dir.mkdir(parents=True, exist_ok=True)
    rs.write_json(sweep.results_dir / "sweep.json", dict(flags=list(sweep.flags), runtime_flags=list(sweep.runtime),
                                                         runs=runs, created=sweep.manifest.get("created", now),
                                                         updated=now))
    for r in sweep.runs:
        r.folder.mkdir(parents=True, exist_ok=True)
        rs.write_json(r.folder / "run.json", dict(preset=r.preset, seed=r.seed, flags=list(r.flags),
                                                  runtime_flags=list(sweep.runtime), config=identity(r.cfg)))


def finish(results_dir, outcomes):
    """Aggregate, print the table and a summary; the exit code.  outcomes: [(run, Outcome)]."""
    print("\n" + table1.write(results_dir), flush=True)
    div = [r.label for r, o in outcomes if o.code == 3]
    bad = [f"{r.label} ({o.message})" for r, o in outcomes if o.code not in (0, 3)]
    print(f"{len(outcomes)} runs: {len(outcomes) - len(div) - len(bad)} done, {len(div)} diverged, {len(bad)} failed; "
          f"table in {results_dir}/table1.md, .json, .png", flush=True)
    if bad:
        print(f"reproduce.py: {len(bad)} run(s) did not finish: " + "; ".join(bad), file=sys.stderr, flush=True)
    return 1 if bad else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = make_parser().parse_known_args(argv)
        if args.table_only and (args.presets or args.seeds or extra):
            raise UsageError("--table-only runs nothing: give only --results-dir")
        if args.table_only and not table1.has_runs(args.results_dir):
            raise UsageError(f"--table-only: no runs of reproduce.py in {Path(args.results_dir).resolve()}")
        sweep = None if args.table_only else plan(args, extra)
    except UsageError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        return 2
    if sweep is None:
        print(table1.write(args.results_dir), end="")
        return 0
    if args.executor == "slurm":
        return run_slurm(args, sweep)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed sweep stops its runs too
    try:
        write_records(sweep)
        return finish(sweep.results_dir, run_local(args, sweep))
    except KeyboardInterrupt:
        print("reproduce.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    # through the importable module, so that jobs pickle `reproduce.Job` by reference, not by value
    import reproduce
    sys.exit(reproduce.main())
