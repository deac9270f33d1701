"""Reproduce Table 1 of Ernoult et al. (NeurIPS 2019): a sweep of training runs over presets x seeds
(x --grid points) that survives kills and several sittings, run locally (a process pool) or on Slurm
(submitit), and aggregated into DIR/table1.json, table1.md and table1.png (table1.py).

    python reproduce.py --presets P-1h EB-1h --seeds 1 2 3 4 5 --workers 2 --results-dir DIR
    python reproduce.py --presets P-2h --seeds 1 2 3 4 5 --results-dir DIR --executor slurm \\
                        --slurm-partition gpu --slurm-time 600 --slurm-gpus 1 --device-label 0
    python reproduce.py --presets P-1h --seeds 1 2 3 --grid beta=0.1,0.05 --stack --workers 2 --results-dir DIR
    python reproduce.py --table-only --results-dir DIR

Other flags are main.py's, passed to every run over the preset (--epochs 1 --T 8 ...); all but --data-dir,
--device-label, --threads and --quiet make the run's identity (its Config, hashed into its folder name), one
set per results dir.  The same command again skips finished runs and resumes the others.  Exit codes: 0 ok
(diverged runs are kept), 1 a run or the Slurm submission failed, 2 bad input (nothing written), 130 interrupted.
"""
import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import itertools
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
RUNTIME = ("data_dir", "device_label", "quiet", "threads")  # how a run executes, not what it computes
NOT_IDENTITY = RUNTIME + ("results_dir", "resume", "explicit", "list_presets")
GRID = {"beta": "beta", "lr-scale": "lr_tab", "nudging": "nudging"}  # --grid KEY: the Config field it sets
Sweep = dataclasses.make_dataclass("Sweep", ["results_dir", "runs", "flags", "runtime", "manifest"])


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the sweep.  Picklable: it travels to workers and Slurm jobs."""
    preset: str
    seed: int
    flags: tuple        # the run's identity flags (the sweep's and its --grid point's), canonical
    argv: tuple         # the equivalent main.py command line, recorded in config.json
    cfg: config.Config  # main.parse_args(argv)
    folder: Path        # cfg.results_dir
    label: str          # "<preset> [<grid point>] seed <s>", for messages


def identity(cfg):
    """What a run computes: its Config's fields that differ from the defaults, runtime ones aside."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in NOT_IDENTITY and v != getattr(config.DEFAULTS, k)}


def flag_tokens(cfg, fields):
    """The flags that set `fields` of cfg, sorted: the same in another order or spelling (--epochs=2, --lr-tab)."""
    named = ((config.flag_name(k), getattr(cfg, k)) for k in fields)
    groups = [[n if v else "--no-" + n[2:]] if isinstance(v, bool) else
              [n, *map(str, v if isinstance(v, list) else [v])] for n, v in named]
    return tuple(t for g in sorted(groups) for t in g)


def run_folder(results_dir, preset, seed, flags, cfg):
    """DIR/runs/<preset>__<flags>-<hash of the Config without its seed>/seed-<s>."""
    slug = "_".join(flags).replace("--", "").replace("/", "_")[:48]
    digest = hashlib.sha1(json.dumps(identity(cfg.replace(seed=None)), sort_keys=True).encode()).hexdigest()[:8]
    return Path(results_dir) / "runs" / f"{preset}__{slug + '-' if slug else ''}{digest}" / f"seed-{seed}"


def has_progress(trial):
    """A Trial (<model>/<device>-<date>/Trial-<k>/ in a run folder) counts once it saved an epoch or diverged."""
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


def say(who, *msg, files=(), **_):  # msg under [who's label] on stdout, in one write (whole lines), and in files
    print(f"[{getattr(who, 'label', who)}] {' '.join(map(str, msg))}\n", end="", flush=True)
    for f in files:
        print(*msg, file=f, flush=True)


class Job:
    """A job on a run or a population (a tuple of runs): under every run folder's lock, discard Trials without
    progress, skip finished runs, resume the others alone or start them (several: together, train_population).
    On preemption or timeout submitit requeues what `checkpoint` returns: the same call, which resumes."""

    def __call__(self, item):
        runs, ready = (item if isinstance(item, tuple) else (item,)), []  # item: a Run, or a population (--stack)
        with contextlib.ExitStack() as held:  # the locks, held while this process works in the folders
            for run in runs:
                run.folder.mkdir(parents=True, exist_ok=True)
                try:
                    fcntl.flock(held.enter_context(open(run.folder / ".lock", "a")), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    ready.append((None, {}, Outcome(run.folder, 1, {}, "busy: its folder is locked by another "
                                                                         "runner or job")))
                    continue
                for t in [t for t in table1.trials_of(run.folder) if not has_progress(t)]:
                    shutil.rmtree(t, ignore_errors=True)
                    say(run, f"discarded {t} (no checkpoint: killed before its first epoch ended)")
                ready.append(state(run))  # (the Trial to resume or None, its results, the Outcome if done)
            fresh = [i for i, (trial, _, done) in enumerate(ready) if not done and trial is None]
            together = dict(zip(fresh, self.train([runs[i] for i in fresh]))) if len(fresh) > 1 else {}
            outs = [done or together.get(i) or self.train([runs[i]], trial, res)[0]
                    for i, (trial, res, done) in enumerate(ready)]
        if any(o.code not in (0, 3) for o in outs):  # the job fails, with every run's Outcome for report
            e = RuntimeError("; ".join(o.message or f"exit {o.code}" for o in outs if o.code not in (0, 3)))
            e.outcomes = outs
            raise e
        return outs if isinstance(item, tuple) else outs[0]

    def train(self, runs, trial=None, res=None):
        """runs[0] alone (resuming `trial` if given), or the runs as one population; an Outcome each."""
        import population
        together = f"{runs[0].preset}: population of {len(runs)}" if len(runs) > 1 else ""
        for run in runs:
            say(run, f"resume from epoch {res.get('epochs_done', 0)}/{run.cfg.epochs}: {trial}" if trial else
                f"start: {run.folder}" + (f" (in the {together})" if together else ""))
        with contextlib.ExitStack() as files:
            log = functools.partial(say, together or runs[0], files=[
                files.enter_context(open(r.folder / "runner.log", "a")) for r in runs])
            try:
                outs = population.train_population([r.cfg for r in runs], log, [["main.py", *r.argv] for r in runs]) \
                    if together else [experiment.run(runs[0].cfg.replace(resume=trial and str(trial)), log=log,
                                                     argv=["main.py", *runs[0].argv])]
            except UsageError as e:
                return [Outcome(r.folder, 1, {}, f"refused: {e}") for r in runs]
        for run, out in zip(runs, outs):
            out.message = f"{out.results.get('epochs_done')}/{run.cfg.epochs} epochs" if out.code == 0 else out.message
        return outs

    def checkpoint(self, item):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, item)


def report(item, job=None, outs=None):
    """Print how each run of a job ended (given, or the job's result or error); [(run, Outcome)]."""
    runs = item if isinstance(item, tuple) else (item,)
    try:
        outs = outs or job.result()
    except Exception as e:  # a failed job's Outcomes, or its error, re-raised with its traceback: its last line
        outs = getattr(e, "outcomes", None) or [Outcome(r.folder, 1, {}, (str(e).strip().splitlines()
                                                                          or [type(e).__name__])[-1]) for r in runs]
    outs = [outs] if isinstance(outs, Outcome) else outs
    for run, out in zip(runs, outs):
        word = {0: "done", 3: "DIVERGED", 130: "INTERRUPTED"}.get(out.code, "FAILED")
        say(run, word + (f": {out.message}" if out.message else ""))
    return list(zip(runs, outs))


def worker_init(parent):
    """A local worker dies with the runner (Linux): a killed sweep leaves nothing training."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the runner died before prctl
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def jobs_of(runs, stack, split=1):
    """The jobs' items: each run alone or, with --stack, each preset's runs as `split` populations (tuples)."""
    groups = [list(g) for _, g in itertools.groupby(runs, lambda r: r.preset)] if stack else []  # consecutive
    return [tuple(g[i::min(split, len(g))]) for g in groups for i in range(min(split, len(g)))] or list(runs)


def run_local(args, sweep):
    """Run the sweep's jobs, --workers at once, and aggregate; the exit code."""
    items = jobs_of(sweep.runs, args.stack, args.workers)
    ex = cf.ProcessPoolExecutor(max(1, min(args.workers, len(items))), multiprocessing.get_context("spawn"),
                                initializer=worker_init, initargs=(os.getpid(),))
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed sweep stops its runs too
    try:
        write_records(sweep)
        jobs = {ex.submit(Job(), item): item for item in items}
        return finish(sweep.results_dir, [ended for j in cf.as_completed(jobs) for ended in report(jobs[j], j)])
    except KeyboardInterrupt:  # stop the runs now: only the epochs in progress are lost
        for p in multiprocessing.active_children():
            p.kill()
        print("reproduce.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        signal.signal(signal.SIGTERM, previous)


def run_slurm(args, sweep):
    """Submit the runs that need work as one array job and return; a failed submission writes nothing."""
    outs = [state(r)[2] for r in sweep.runs]  # read-only: the jobs discard stale Trials under their lock
    todo = [r for r, out in zip(sweep.runs, outs) if not out or out.code == 1]
    [report(r, outs=[out]) for r, out in zip(sweep.runs, outs) if out and out.code != 1]
    if not todo:
        write_records(sweep)
        return finish(sweep.results_dir, [])
    slurm_dir, items = sweep.results_dir / "slurm", jobs_of(todo, args.stack)
    new_dirs, before = [d for d in (sweep.results_dir, slurm_dir) if not d.exists()], set(slurm_dir.glob("*"))
    try:
        import submitit
        ex = submitit.AutoExecutor(folder=slurm_dir / "%j", cluster="slurm",
                                   slurm_max_num_timeout=args.slurm_max_requeues)
        # jobs unpickle reproduce.Job: the repository must be importable wherever they start
        setup = [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
        ex.update_parameters(name="ep-table1", timeout_min=args.slurm_time, cpus_per_task=args.slurm_cpus,
                             mem_gb=args.slurm_mem or None, gpus_per_node=args.slurm_gpus or None,
                             slurm_partition=args.slurm_partition, slurm_setup=setup,
                             slurm_array_parallelism=args.slurm_array_parallelism or None)
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), ex.batch():  # one array job
            jobs = [ex.submit(Job(), item) for item in items]  # (submitit echoes sbatch's error, which e holds)
    except Exception as e:  # sbatch failed (controller down, refused), or submitit could not read its answer
        for p in set(slurm_dir.glob("*")) - before:  # submitit's pickles
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for d in new_dirs:
            shutil.rmtree(d, ignore_errors=True)
        cause = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
        print(f"reproduce.py: error: Slurm submission failed, nothing submitted: {cause}", file=sys.stderr)
        return 1
    write_records(sweep)
    for item, job in zip(items, jobs):
        for run in item if isinstance(item, tuple) else [item]:
            say(run, f"job {job.job_id}, log {job.paths.stdout}")
    print(f"{len(jobs)} job(s) submitted; logs in {slurm_dir}\nwhen they have finished: "
          f"python reproduce.py --table-only --results-dir {sweep.results_dir}", flush=True)
    return 0


SLURM = [  # flag, type, default, lower bound, metavar, help
    ("--slurm-partition", str, None, None, "NAME", "partition (if not given: the cluster's default)"),
    ("--slurm-time", int, 1440, 1, "MINUTES", "time limit per job; a job that reaches it requeues and resumes"),
    ("--slurm-cpus", int, 2, 1, "N", "CPUs per job"),
    ("--slurm-gpus", int, 0, 0, "N", "GPUs per job (pass --device-label 0 so that the runs use it)"),
    ("--slurm-mem", float, 16, 0, "GB", "memory per job (0: the cluster's default)"),
    ("--slurm-array-parallelism", int, 0, 0, "N", "jobs of the array running at once (0: submitit's default, 256)"),
    ("--slurm-max-requeues", int, 20, 0, "N", "timeouts after which a job is not requeued (preemptions do not count)")]


def make_parser():
    p = main_py.Parser(prog="reproduce.py", allow_abbrev=False, formatter_class=main_py.HelpFormatter,
                        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    a = p.add_argument
    a("--presets", nargs="+", metavar="NAME", help="train presets (python main.py --list-presets); needed to run")
    a("--seeds", nargs="+", type=int, metavar="S", help="one run per seed and preset; needed to run")
    a("--grid", nargs="+", metavar="KEY=V1,V2", help="crosses the seeds; KEY: beta, nudging, lr-scale (lr_tab factor)")
    a("--stack", action="store_true", help="train each preset's runs as populations (population.py), one per --workers")
    a("--results-dir", default="results/table1", metavar="DIR", help="the sweep: runs/, sweep.json, table1.*")
    a("--table-only", action="store_true", help="aggregate what is in --results-dir, run nothing")
    a("--executor", choices=["local", "slurm"], default="local",
      help="local: a pool of --workers processes, waits; slurm: submits one array job through submitit, returns")
    a("--workers", type=int, default=1, metavar="N", help="local: jobs at once")
    a("--threads-per-run", type=int, metavar="N", help="= main.py's --threads (if neither: 1, or --slurm-cpus)")
    g = p.add_argument_group("slurm (--executor slurm)")
    for flag, kind, default, _, metavar, help in SLURM:
        g.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)
    return p


def check_args(args, extra):
    """Check the runner's flags; (the pass-through flags' Config, the --grid points: each [(KEY, value)])."""
    for name in ("presets", "seeds"):
        values = getattr(args, name)
        dup = sorted({v for v in values or [] if values.count(v) > 1}, key=str)
        if not values or dup:
            raise UsageError(f"--{name}: " + (f"duplicate {', '.join(map(str, dup))}" if dup else "give at least one"))
    for flag, lo in [(f[0], f[3]) for f in SLURM] + [("--workers", 1), ("--threads-per-run", 1)]:
        if lo is not None and (v := getattr(args, flag[2:].replace("-", "_"))) is not None and v < lo:
            raise UsageError(f"{flag} must be >= {lo} (got {v})")
    trains = sorted(k for k, p in config.PRESETS.items() if p.flags.get("action") == "train")
    for p in args.presets:
        if p not in trains:
            raise UsageError(f"--presets: {p!r} is not a train preset (these are: {', '.join(trains)})")
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]  # submitit needs both
    if args.executor == "slurm" and missing:
        raise UsageError(f"--executor slurm: no Slurm on this machine ({' and '.join(missing)} not on PATH)")
    given, axes = main_py.parse_args(extra), {}  # the pass-through flags alone: which Config fields they set
    for item in args.grid or []:
        key, _, values = item.partition("=")
        if key not in GRID or "" in values.split(",") or key in axes or key in given.explicit:
            raise UsageError(f"--grid {item}: expected KEY=V1,V2,... with KEY one of {', '.join(GRID)}, each once "
                             "(and beta, nudging not also passed as main.py flags)")
        try:  # each value once (0.1 and 0.10 are one value)
            axes[key] = dict.fromkeys(s if key == "nudging" else float(s) for s in values.split(","))
        except ValueError:
            raise UsageError(f"--grid {item}: beta and lr-scale take numbers")
    return given, list(itertools.product(*[[(k, v) for v in vs] for k, vs in axes.items()]))


def plan(args, extra):
    """The sweep: its runs as validated Configs, every check made before anything is written."""
    given, points = check_args(args, extra)
    reserved = sorted(set(given.explicit) & RESERVED.keys())
    if reserved:
        raise UsageError(f"{config.flag_name(reserved[0])} cannot be passed through: {RESERVED[reserved[0]]}")
    fields, results_dir = set(given.explicit) - set(RUNTIME), Path(args.results_dir).resolve()
    data_dir = ((Path.cwd() if "data_dir" in given.explicit else REPO) / given.data_dir).resolve()  # default: REPO's
    threads = given.threads or args.threads_per_run or (args.slurm_cpus if args.executor == "slurm" else 1)
    execution = ["--quiet", "--data-dir", str(data_dir), "--threads", str(threads)]
    runs = []
    for preset, point, seed in itertools.product(args.presets, points, args.seeds):
        argv = ["--preset", preset, "--seed", str(seed), *extra]
        lrs = main_py.parse_args(argv).lr_tab
        for key, v in point:  # lr-scale multiplies the run's lr_tab
            argv += [config.flag_name(GRID[key]), *([f"{x * v:.12g}" for x in lrs] if key == "lr-scale" else [str(v)])]
        flags = flag_tokens(cfg := main_py.parse_args(argv), sorted(fields | {GRID[k] for k, _ in point}))
        folder = run_folder(results_dir, preset, seed, flags, cfg)
        argv += [*execution, "--results-dir", str(folder)]
        cfg = main_py.parse_args(argv)  # validated; on Slurm the device is the job's, not this machine's
        experiment.validate(cfg.replace(device_label=-1) if args.executor == "slurm" else cfg)
        label = " ".join([preset, *(f"{k}={v}" for k, v in point), f"seed {seed}"])
        runs.append(Run(preset, seed, flags, tuple(argv), cfg, folder, label))
    for preset in args.presets if args.stack else []:  # can its runs share one computation?
        import population
        try:
            population.check_stackable([r.cfg for r in runs if r.preset == preset])
        except (ValueError, NotImplementedError) as e:
            raise UsageError(f"--stack: {preset}: {e}")
    runtime = flag_tokens(runs[0].cfg, sorted(set(given.explicit) & {"data_dir", "device_label", "threads"}))
    man, _ = table1.read_json(results_dir / "sweep.json")
    man, flags = man if isinstance(man, dict) and table1.has_runs(results_dir) else {}, flag_tokens(given, fields)
    if man and tuple(man.get("flags", [])) != flags:
        raise UsageError(f"--results-dir {results_dir} holds a sweep with flags [{table1.show_flags(man['flags'])}], "
                         f"this call has [{table1.show_flags(flags)}]: use another --results-dir")
    return Sweep(results_dir, tuple(runs), flags, runtime, man)


def write_records(sweep):
    """DIR/sweep.json (the sweep's flags, presets and seeds so far) and each run's run.json (what the table reads)."""
    now, old = datetime.datetime.now().isoformat(timespec="seconds"), sweep.manifest.get("runs", {})
    runs = {p: sorted(set(old.get(p, [])) | {r.seed for r in sweep.runs if r.preset == p})
            for p in sorted({*old, *(r.preset for r in sweep.runs)})}
    sweep.results_dir.mkdir(parents=True, exist_ok=True)
    rs.write_json(sweep.results_dir / "sweep.json", dict(flags=list(sweep.flags), runtime_flags=list(sweep.runtime),
                  runs=runs, created=sweep.manifest.get("created", now), updated=now))
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
    try:
        args, extra = make_parser().parse_known_args(argv)  # argv None: sys.argv[1:]
        if args.table_only and (args.presets or args.seeds or args.grid or args.stack or extra):
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
    return (run_slurm if args.executor == "slurm" else run_local)(args, sweep)


if __name__ == "__main__":
    # through the importable module, so that jobs pickle `reproduce.Job` by reference, not by value
    import reproduce
    sys.exit(reproduce.main())
