"""The experiment API: one Config in, one finished action out, in-process.  Both front ends call it:
main.py (the command line) and reproduce.py (Table-1 sweeps).

    cfg = main.parse_args(["--preset", "P-1h", "--seed", "1"])   # or config.preset_config("P-1h", seed=1)
    outcome = experiment.run(cfg)                                 # validates, then trains
    outcome.folder, outcome.code, outcome.results["error_test_tab"]

validate() is the only place where a Config is checked: every contradiction or impossible request is
a UsageError (one line naming the flags) before any work.  The three actions live here side by side:
train (epochs, checkpoints, resume), plotcurves (the GDU processes of one batch) and receipe (sign
agreement).  Their per-batch routines are netFunctions'; folders, checkpoints and every file write are
results.py's.
"""
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from config import DEFAULTS, FIELDS, METHODS, Config, flag_name

N_TRAIN, N_TEST = 60000, 10000  # MNIST
# What --resume accepts besides --epochs: flags that change how a run is executed, not what it computes.
RESUME_RUNTIME_FLAGS = ("resume", "epochs", "quiet", "device_label", "threads", "data_dir")
RESUME_IGNORED_FLAGS = ("results_dir",)  # the folder is given: where new folders would go does not matter
TRAIN_ONLY = ("epochs", "lr_tab", "benchmark", "training_method", "test_batch_size", "test_subset")
CONV_ONLY = ("padding", "Fconv", "Fpool")


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2, nothing written."""


class FigureError(Exception):
    """The figures of plotcurves/receipe could not be drawn (the data is saved)."""


@dataclass
class Outcome:
    """What one run produced.  code: 0 done, 3 diverged (results keeps the finished epochs and a
    "diverged" message), 130 interrupted."""
    folder: Path
    code: int = 0
    results: dict = field(default_factory=dict)
    message: str = ""


# ================================================================================================
# Validation

def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def _given(cfg, name):
    return name in cfg.explicit


def _check_ranges(cfg):
    for name, lo in [("T", 1), ("Kmax", 1), ("batch_size", 1), ("test_batch_size", 1), ("epochs", 1),
                     ("trials", 1), ("Fconv", 1), ("Fpool", 1), ("padding", 0), ("device_label", -1)]:
        if getattr(cfg, name) < lo:
            raise UsageError(f"{flag_name(name)} must be >= {lo} (got {getattr(cfg, name)})")
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"--threads must be >= 1 (got {cfg.threads})")
    if cfg.seed is not None and not 0 <= cfg.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2^32) (got {cfg.seed})")
    if cfg.Kmax > cfg.T:
        raise UsageError(f"--Kmax must be <= --T (got Kmax {cfg.Kmax} > T {cfg.T})")
    if not (_finite(cfg.beta) and cfg.beta > 0):
        raise UsageError(f"--beta must be a finite number > 0 (got {cfg.beta})")
    if not (_finite(cfg.dt) and cfg.dt > 0):
        raise UsageError(f"--dt must be a finite number > 0 (got {cfg.dt})")
    if cfg.dt * (1 + cfg.beta) > 2:
        # the output's update s0 <- (1 - dt(1 + beta)) s0 + ... grows geometrically past this bound
        raise UsageError(f"--dt {cfg.dt:g} with --beta {cfg.beta:g}: dt*(1+beta) must be <= 2, else the "
                         f"nudged output oscillates with growing amplitude and the run can only diverge")
    for name, n in [("train_subset", N_TRAIN), ("test_subset", N_TEST)]:
        v = getattr(cfg, name)
        if v is not None and not 1 <= v <= n:
            raise UsageError(f"{flag_name(name)} must be in [1, {n}] (MNIST has {n} examples; got {v})")
    if any(d < 1 for d in cfg.size_tab) or any(c < 1 for c in cfg.C_tab):
        raise UsageError("--size_tab and --C_tab entries must be >= 1")


def _check_model(cfg):
    kind = cfg.kind
    if kind == "toy":
        if len(cfg.size_tab) != 3:
            raise UsageError(f"--size_tab: the toy model expects 'out hidden in', e.g. 10 50 5 (got {cfg.size_tab})")
        if cfg.action == "train":
            raise UsageError("--toymodel has no dataset to train on: use --action plotcurves or receipe")
    elif kind == "fc":
        if len(cfg.size_tab) < 3 or cfg.size_tab[-1] != 784 or cfg.size_tab[0] != 10:
            raise UsageError(f"--size_tab expects 10 <hidden sizes> 784 (>= 1 hidden layer), got {cfg.size_tab}")
    else:
        if len(cfg.C_tab) < 2 or cfg.C_tab[-1] != 1:
            raise UsageError(f"--C_tab expects channels from the top conv down to the input ending in 1, "
                             f"e.g. 64 32 1 (got {cfg.C_tab})")
        if cfg.size_tab[0] != 10:
            raise UsageError(f"--size_tab for the conv net lists the classifier layers, starting with 10 "
                             f"(got {cfg.size_tab})")
        if cfg.padding and cfg.Fconv % 2 == 0:
            raise UsageError(f"--padding needs an odd --Fconv for same padding (got {cfg.Fconv})")
        from netClasses import conv_geometry
        try:
            conv_geometry(cfg.C_tab, cfg.size_tab, cfg.Fconv, cfg.Fpool, bool(cfg.padding))
        except ValueError as e:
            raise UsageError(f"--C_tab/--Fconv/--Fpool: {e}")


def ignored_flags(cfg):
    """The explicitly set flags that this model and action would not honour: a run must never record
    a setting it did not use.  Returns (flag field, why) pairs."""
    out = []
    kind = cfg.kind
    if kind == "toy":
        out += [(k, "the toy model") for k in ("discrete", "C_tab") if _given(cfg, k) and getattr(cfg, k)]
        if _given(cfg, "train_subset") and cfg.train_subset is not None:
            out.append(("train_subset", "the toy model, which uses random inputs"))
    if kind == "conv":
        if _given(cfg, "dt") and cfg.dt != 1.0:
            out.append(("dt", "the conv net, whose step is always 1"))
        out += [(k, "the conv net") for k in ("discrete", "no_clamp") if _given(cfg, k) and getattr(cfg, k)]
    if kind == "fc" and cfg.discrete and _given(cfg, "no_clamp") and cfg.no_clamp:
        out.append(("no_clamp", "the prototypical model (--discrete), which never clamps"))
    if kind != "conv":
        out += [(k, "a network without --C_tab") for k in CONV_ONLY
                if _given(cfg, k) and getattr(cfg, k) != getattr(DEFAULTS, k)]
    if cfg.action != "train":
        out += [(k, f"--action {cfg.action}") for k in TRAIN_ONLY
                if _given(cfg, k) and getattr(cfg, k) != getattr(DEFAULTS, k)]
    elif cfg.training_method == "BPTT" and not cfg.benchmark and cfg.nudging != "one-sided":
        out.append(("nudging", "--training-method BPTT without --benchmark (no EP run)"))
    if cfg.action != "receipe" and _given(cfg, "trials") and cfg.trials != DEFAULTS.trials:
        out.append(("trials", f"--action {cfg.action}"))
    return out


def _check_paths(cfg):
    if cfg.device_label >= 0:
        import torch
        if not torch.cuda.is_available():
            raise UsageError(f"--device-label {cfg.device_label}: CUDA is not available on this machine "
                             f"(use -1 for CPU)")
        if cfg.device_label >= torch.cuda.device_count():
            raise UsageError(f"--device-label {cfg.device_label}: only {torch.cuda.device_count()} CUDA device(s)")
    if cfg.kind != "toy":
        dd = Path(cfg.data_dir)
        if dd.exists() and not (dd.is_dir() and os.access(dd, os.R_OK | os.X_OK)):
            raise UsageError(f"--data-dir {cfg.data_dir}: not a readable directory")
    probe = Path(cfg.results_dir)
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    except OSError as e:  # e.g. a name longer than the file system allows
        raise UsageError(f"--results-dir {cfg.results_dir}: cannot create the result folder ({e.strerror or e})")
    if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        raise UsageError(f"--results-dir {cfg.results_dir}: not writable")


def validate(cfg, epochs_done=0):
    """Every check before any work; raises UsageError naming the flag and what is expected.  For a
    Config with resume set, the resumed run's own Config is checked and returned (resolve_resume)."""
    if cfg.resume and epochs_done == 0:
        cfg, ck = resolve_resume(cfg)
        return validate(cfg, ck["epoch"])
    if cfg.training_method not in METHODS:
        raise UsageError(f"--training-method must be one of {', '.join(sorted(METHODS))} (got {cfg.training_method})")
    cfg = cfg.replace(training_method=METHODS[cfg.training_method])  # eqprop -> EP: what train() dispatches on
    _check_ranges(cfg)
    _check_model(cfg)
    bad = ignored_flags(cfg)
    if bad:
        names = " ".join(flag_name(k) for k, _ in bad)
        raise UsageError(f"{names}: not used by {bad[0][1]}; remove {'it' if len(bad) == 1 else 'them'} "
                         f"(a run records only what it runs)")
    if cfg.action == "train":
        n_layers = cfg.n_weight_layers
        if len(cfg.lr_tab) != n_layers:
            raise UsageError(f"--lr_tab needs {n_layers} learning rates (one per weight layer, output side first), "
                             f"got {len(cfg.lr_tab)}")
        if not all(_finite(lr) and lr > 0 for lr in cfg.lr_tab):
            raise UsageError(f"--lr_tab: every learning rate must be a finite number > 0 (got {cfg.lr_tab})")
        if cfg.epochs < epochs_done:
            raise UsageError(f"--epochs {cfg.epochs}: the run has already done {epochs_done} epochs "
                             f"(give a target >= {epochs_done})")
    if cfg.kind != "toy":
        n_train = cfg.train_subset or N_TRAIN
        if cfg.batch_size > n_train:
            raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {n_train} training examples"
                             + (f" of --train-subset {cfg.train_subset}" if cfg.train_subset else ""))
        n_test = cfg.test_subset or N_TEST
        if cfg.action == "train" and _given(cfg, "test_batch_size") and cfg.test_batch_size > n_test:
            raise UsageError(f"--test-batch-size {cfg.test_batch_size} is larger than the {n_test} test examples"
                             + (f" of --test-subset {cfg.test_subset}" if cfg.test_subset else ""))
    _check_paths(cfg)
    return cfg


def _flag_value(v):
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def resolve_resume(cfg):
    """cfg.resume = FOLDER: the run's own Config from its config.json, with what only changes how it
    runs (--epochs to extend, --quiet, --device-label, --threads, --data-dir) from cfg.  A preset or
    any other flag that differs from the stored value is refused.  Reads only.  Returns (cfg, ck)."""
    import results as rs
    folder = Path(cfg.resume)
    if "preset" in cfg.explicit and "resume" in cfg.explicit:  # both typed by the user
        raise UsageError("--resume: --preset cannot be given (the folder's config.json holds the experiment; "
                         "only --epochs, --quiet, --device-label, --threads and --data-dir may be given)")
    try:
        saved = rs.read_run_config(folder)
        ck = rs.load_checkpoint(folder / "checkpoint.pt")
    except rs.ResultError as e:
        raise UsageError(f"--resume {cfg.resume}: {e}")
    if saved["action"] != "train":
        raise UsageError(f"--resume {cfg.resume}: only train runs can be resumed")
    for k in cfg.explicit:
        if k in RESUME_RUNTIME_FLAGS + RESUME_IGNORED_FLAGS:
            continue
        stored = saved.get(k, getattr(DEFAULTS, k))
        if getattr(cfg, k) != stored:
            raise UsageError(f"--resume: {flag_name(k)} would change the experiment (the folder has "
                             f"{_flag_value(stored)}); only --epochs, --quiet, --device-label, --threads and "
                             f"--data-dir may be given with --resume")
    base = Config(**{k: saved.get(k, getattr(DEFAULTS, k)) for k in FIELDS})
    runtime = {k: getattr(cfg, k) for k in RESUME_RUNTIME_FLAGS if k in cfg.explicit and k != "resume"}
    return base.replace(**{**runtime, "resume": str(folder), "quiet": cfg.quiet}), ck


# ================================================================================================
# Running

def thread_count(cfg):
    """The thread policy (docs/performance.md): --threads; else OMP_NUM_THREADS, which torch honours
    (None: leave torch alone); else one thread for the small nets (one hidden layer, the toy), whose
    10x512 products are overhead-bound, so that a second thread only adds synchronisation, and collapses
    when other processes compete for the cores; else torch's default."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if cfg.kind == "toy" or (cfg.kind == "fc" and len(cfg.size_tab) == 3):
        return 1
    return None


def run(cfg, log=print, argv=None):
    """Validate cfg, then load data, build the nets, create (or reopen, for resume) the result folder
    and run the action.  Figures are rendered at the end.  Raises UsageError for bad input or data
    (nothing written), FigureError when plotcurves/receipe figures fail; returns an Outcome."""
    import torch

    import mnist
    import netFunctions as nf
    import results as rs
    from netClasses import build_net

    cfg = validate(cfg)
    ck = rs.load_checkpoint(Path(cfg.resume) / "checkpoint.pt") if cfg.resume else None
    chatter = (lambda *a, **k: None) if cfg.quiet else log
    threads = thread_count(cfg)
    if threads:
        torch.set_num_threads(threads)
    drawn = cfg.seed is None
    if drawn:
        cfg = cfg.replace(seed=random.SystemRandom().randrange(2**31))
    nf.set_seed(cfg.seed)
    device = torch.device("cpu" if cfg.device_label < 0 else f"cuda:{cfg.device_label}")

    # data before any folder is created or changed: a data problem writes nothing
    Xtr = Ytr = Xte = Yte = None
    try:
        if not cfg.toymodel:
            flat = not cfg.C_tab
            Xtr, Ytr = mnist.load_mnist(cfg.data_dir, True, cfg.train_subset, flat, device, log=chatter)
            if cfg.action == "train":
                Xte, Yte = mnist.load_mnist(cfg.data_dir, False, cfg.test_subset, flat, device, log=chatter)
    except mnist.DataError as e:
        raise UsageError(str(e))

    torch.manual_seed(cfg.seed)
    net = build_net(cfg).to(device)
    net_bptt = None
    if cfg.action == "train" and cfg.benchmark:
        net_bptt = build_net(cfg).to(device)
        net_bptt.load_state_dict(net.state_dict())  # identical initial weights
    name = rs.model_name(cfg)
    if ck is not None:
        path = Path(cfg.resume)
        net.load_state_dict(ck["net"])
        if net_bptt is not None:
            net_bptt.load_state_dict(ck["net_bptt"])
        rs.record_resume(path, cfg)
    else:
        try:
            path, name = rs.createPath(cfg, cfg.results_dir)
        except OSError as e:
            raise UsageError(f"--results-dir {cfg.results_dir}: cannot create the result folder "
                             f"({e.strerror or e})")
        rs.createHyperparameterfile(path, name, cfg)
        rs.write_config(path, cfg, device, argv)
    log(f"results in {path}", flush=True)
    log(f"seed {cfg.seed}" + (" (drawn; pass --seed to repeat the run)" if drawn else ""), flush=True)
    title = describe(cfg, net)

    state = TrainState(results=ck["results"] if ck else {})
    outcome = Outcome(path, results=state.results)
    try:
        if cfg.action == "train":
            train_action(cfg, net, net_bptt, (Xtr, Ytr, Xte, Yte), path, name, title, state, ck, log)
        elif cfg.action == "plotcurves":
            state.results = plotcurves_action(cfg, net, Xtr, Ytr, device, path, name, title, log)
        else:
            state.results = receipe_action(cfg, net, Xtr, Ytr, device, path, name, title, log)
    except nf.Divergence as e:
        return Outcome(path, 3, state.results, str(e))
    except KeyboardInterrupt:
        return Outcome(path, 130, state.results, interrupted(cfg, path, state, ck is not None))
    outcome.results = state.results
    _render(cfg, path, chatter, log)
    return outcome


def _render(cfg, path, chatter, log):
    import plotFunctions
    try:
        written = plotFunctions.render(path)
        chatter("figures: " + ", ".join(str(Path(w).name) for w in written))
    except Exception as e:
        msg = (f"figures not rendered ({' '.join(str(e).split()) or type(e).__name__}); the data is complete in "
               f"{path}: re-render with `cd {path} && python plotFunctions.py`")
        if cfg.action != "train":  # for plotcurves and receipe the figures are the product
            raise FigureError(msg)
        log(f"warning: {msg}")  # a training run's product is its numbers, already saved


@dataclass
class TrainState:
    """What the trainer holds in memory: the results dict written after each epoch."""
    results: dict = field(default_factory=dict)


def interrupted(cfg, path, state, resumed):
    """Ctrl-C: say where the run stands.  A folder with no finished epoch (or an unfinished
    plotcurves/receipe) cannot be resumed: it is removed rather than left behind."""
    if cfg.action == "train" and (path / "checkpoint.pt").is_file():
        done = state.results.get("epochs_done", "?")
        return f"interrupted after {done} finished epoch(s); resume with: python main.py --resume {path}"
    if not resumed:
        shutil.rmtree(path, ignore_errors=True)
        return f"interrupted before anything was finished; removed {path}"
    return "interrupted; nothing new was finished"


# ================================================================================================
# The three actions

def train_action(cfg, net, net_bptt, data, path, name, title, state, ck=None, log=print):
    """Train `net` with --training-method (and, with --benchmark, `net_bptt` with BPTT from the same
    initial weights), epoch by epoch, side by side.  After every epoch the checkpoint and
    results.json are rewritten atomically, so an interrupted run resumes from its last epoch."""
    import netFunctions as nf
    import results as rs
    Xtr, Ytr, Xte, Yte = data
    runs = [(cfg.training_method, net, "")]
    if net_bptt is not None:
        runs.append(("BPTT", net_bptt, "_bptt"))

    def key(k, sfx):  # the original's names: error_train_tab, error_train_bptt_tab, ...
        return k.replace("_tab", sfx + "_tab")

    if ck is not None:
        results, start = ck["results"], ck["epoch"] + 1
        # the checkpoint is written before results.json: a kill between the two is mended here
        rs.write_json(path / "results.json", results)
    else:
        results, start = dict(action="train", model=name, title=title, method=cfg.training_method,
                              seed=cfg.seed, epochs_done=0, elapsed_time=0.0), 1
        for _, _, sfx in runs:
            for k in ("error_train_tab", "error_test_tab", "loss_tab", "seconds_tab"):
                results[key(k, sfx)] = []
    state.results = results
    for epoch in range(start, cfg.epochs + 1):
        for method, n, sfx in runs:
            try:
                err, loss, secs = nf.train(n, Xtr, Ytr, method, cfg.batch_size, cfg.seed, epoch, cfg.quiet,
                                           cfg.nudging)
            except nf.Divergence as e:  # keep every finished (epoch, method) and say what happened
                results["diverged"] = str(e)
                rs.write_json(path / "results.json", results)
                raise
            t0 = time.perf_counter()
            test = nf.evaluate(n, Xte, Yte, cfg.test_batch_size)
            ev = time.perf_counter() - t0
            results[key("error_train_tab", sfx)].append(err)
            results[key("error_test_tab", sfx)].append(test)
            results[key("loss_tab", sfx)].append(loss)
            results[key("seconds_tab", sfx)].append(secs + ev)
            results["elapsed_time"] += secs + ev
            label = method if not sfx else f"{method} (benchmark)" if method == runs[0][0] else method
            log(f"epoch {epoch}/{cfg.epochs} {label:>5}: train error {err:6.2f}%  test error {test:6.2f}%"
                f"  ({secs:.1f} s train, {ev:.1f} s test)", flush=True)
        results["epochs_done"] = epoch
        rs.save_checkpoint(path / "checkpoint.pt", epoch, net, net_bptt, results)
        rs.write_json(path / "results.json", results)
    return results


def plotcurves_action(cfg, net, X, Y, device, path, name, title, log):
    """The GDU processes of one random batch: curves.npz, metrics in results.json.  The (large, for
    EB-3h) tensors are freed when this returns, before the figures are rendered."""
    import metrics
    import netFunctions as nf
    import results as rs
    x, y = sample_batch(cfg, X, Y, 0, device, net)
    t0 = time.perf_counter()
    sign = nf.nudge_signs(cfg.seed, 0, 1)[0] if cfg.nudging == "random-sign" else 1
    curves = [[t.cpu().numpy() for t in c] for c in nf.compute_nSdSDT(net, x, y, cfg.nudging, sign)]
    secs = time.perf_counter() - t0
    rs.save_curves(path, *curves)
    m = metrics.gdu_metrics(*curves, net.neuron_names, net.synapse_names)
    res = dict(action="plotcurves", model=name, title=title, toymodel=bool(cfg.toymodel), conv=bool(cfg.C_tab),
               T=cfg.T, Kmax=cfg.Kmax, beta=cfg.beta, batch_size=cfg.batch_size, seed=cfg.seed,
               neuron_names=net.neuron_names, synapse_names=net.synapse_names, metrics=m, seconds=secs)
    rs.write_json(path / "results.json", res)
    print_metrics(m, log)
    log(f"plotcurves: {secs:.1f} s")
    return res


def receipe_action(cfg, net, X, Y, device, path, name, title, log):
    """Sign agreement of EP and BPTT over --trials random batches: results.json."""
    import netFunctions as nf
    import results as rs
    batches = (sample_batch(cfg, X, Y, t, device, net) for t in range(cfg.trials))
    signs = nf.nudge_signs(cfg.seed, 0, cfg.trials) if cfg.nudging == "random-sign" else None
    res = nf.receipe(net, batches, log=log, nudging=cfg.nudging, signs=signs)
    res.update(action="receipe", model=name, title=title, seed=cfg.seed)
    rs.write_json(path / "results.json", res)
    return res


def sample_batch(cfg, X, Y, trial, device, net):
    """A random batch (seeded): MNIST for the nets, uniform x and one shared class for the toy."""
    import torch
    g = torch.Generator().manual_seed(cfg.seed * 1009 + trial)
    dtype = net.layers[0].weight.dtype
    if X is None:
        x = torch.rand(cfg.batch_size, cfg.size_tab[-1], generator=g, dtype=dtype)
        y = torch.zeros(cfg.batch_size, cfg.size_tab[0], dtype=dtype)
        y[:, torch.randint(cfg.size_tab[0], (1,), generator=g)] = 1
        return x.to(device), y.to(device)
    idx = torch.randperm(X.shape[0], generator=g)[: cfg.batch_size].to(X.device)
    return X[idx], Y[idx]


def describe(cfg, net):
    sizes = "-".join(str(d) for d in reversed(net.size_tab))
    if cfg.C_tab:
        sizes = f"conv C{'-'.join(map(str, reversed(cfg.C_tab)))} -> fc {'-'.join(map(str, reversed(cfg.size_tab)))}"
    dt = "" if cfg.discrete or cfg.C_tab else f", dt={cfg.dt:g}"
    return (f"{type(net).__name__} {sizes} ({cfg.activation_function}), T={cfg.T}, K={cfg.Kmax}, "
            f"beta={cfg.beta:g}{dt}")


def print_metrics(m, log):
    log(f"{'layer':>10} {'RMSE':>8} {'cos(total)':>11} {'cos(process)':>13} {'cos(steps)':>11} {'sign agree':>11}")
    for group in ("neurons", "synapses"):
        for n, v in m[group].items():
            log(f"{n:>10} {v['rmse']:8.3f} {v['cos_total']:11.3f} {v['cos_process']:13.3f} {v['cos_steps']:11.3f}"
                f" {v['sign_agree']:10.1f}%")
