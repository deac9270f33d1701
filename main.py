"""Command line of the reproduction of Ernoult et al. (NeurIPS 2019): parse the flags into one
Config, validate every value before any work, dispatch the action.

    python main.py --preset P-1h --seed 1                 # a Table-1 row (EP and BPTT benchmark)
    python main.py --preset fig2-toy                      # the toy model's GDU curves (Fig. 2)
    python main.py --action receipe --preset fig3-P-1h    # sign agreement, to tune T, K, beta
    python main.py --list-presets

Flags keep the original's names, meanings and defaults (README), except --device-label (default -1,
CPU) and the fixes listed under "Deviations" in the README.
"""
import argparse
import datetime
import difflib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

from config import ACTIONS, ACTIVATION_NAMES, FIELDS, METHODS, NUDGINGS, PRESETS, Config, paper_dt

DEFAULTS = Config()
N_TRAIN, N_TEST = 60000, 10000  # MNIST
# What --resume accepts besides --epochs: flags that change how a run is executed, not what it computes.
RESUME_RUNTIME_FLAGS = ("resume", "epochs", "quiet", "device_label", "threads", "data_dir")
RESUME_IGNORED_FLAGS = ("results_dir",)  # the folder is given: where new folders would go does not matter


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2, nothing written."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block; a near miss gets a suggestion
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            flag = m.group(1).split("=")[0]
            near = difflib.get_close_matches(flag, self._option_string_actions, n=1, cutoff=0.6)
            if near:
                message += f" (did you mean {near[0]}?)"
        raise UsageError(message)


OPTION = {}  # Config field -> its primary flag as spelled on the command line (filled by make_parser)

EPILOG = """examples:
  python main.py --preset P-1h --seed 1                     Table 1, P-1h: EP and BPTT from one init
  python main.py --preset P-1h --epochs 1 --train-subset 2000   a short smoke run
  python main.py --preset fig2-toy                          Fig. 2: the toy model's GDU curves
  python main.py --action receipe --preset fig3-P-1h --trials 20
  python main.py --resume FOLDER                            continue an interrupted training run
  python main.py --list-presets                             the presets with the flags they set

presets (--preset NAME; flags given on the command line win):
""" + "\n".join(f"  {k:13s} {p.title}" for k, p in PRESETS.items())


def make_parser(suppress=False):
    """The flags, with Config's defaults.  suppress=True: no defaults, so that parsing tells which
    flags were given explicitly.  No prefix matching: --epoch is not --epochs."""
    kw = dict(argument_default=argparse.SUPPRESS) if suppress else {}
    p = _Parser(prog="main.py", description="EP vs BPTT (Ernoult et al. 2019): train, plotcurves (GDU processes)\n"
                "and receipe (sign agreement) on the paper's four networks.", epilog=EPILOG,
                allow_abbrev=False, formatter_class=_HelpFormatter, **kw)

    def a(*flags, dflt=None, **kwargs):
        dest = kwargs.pop("dest", flags[0].lstrip("-").replace("-", "_"))
        OPTION[dest] = flags[0]
        if not suppress:
            kwargs["default"] = getattr(DEFAULTS, dest) if dflt is None else dflt
        p.add_argument(*flags, dest=dest, **kwargs)

    # optimisation
    a("--batch-size", type=int, help="training batch size; also the batch of plotcurves/receipe")
    a("--test-batch-size", type=int, help="test batch size (speed only)")
    a("--epochs", type=int, help="training epochs (with --resume: the new target)")
    a("--lr_tab", "--lr-tab", type=float, nargs="+", metavar="LR",
      help="per-layer learning rates, output side first (one per weight layer)")
    a("--training-method", choices=sorted(METHODS), help="eqprop (= EP) or BPTT")
    a("--benchmark", action=argparse.BooleanOptionalAction,
      help="also train a BPTT copy from the same initial weights (--no-benchmark: only the method)")
    # network
    a("--size_tab", "--size-tab", type=int, nargs="+", metavar="N",
      help="layer sizes from output to input (conv: the classifier layers)")
    a("--discrete", action="store_true", help="prototypical setting (EPdisc)")
    a("--dt", type=float, help="Euler step of the EB setting (prototypical: 1 unless given)")
    a("--T", type=int, help="free-phase steps (also at evaluation)")
    a("--Kmax", "--k-max", type=int, help="nudged-phase steps = BPTT truncation = GDU curve length")
    a("--beta", type=float, help="nudging strength (> 0)")
    a("--nudging", choices=NUDGINGS, help="one-sided: +beta (the paper's); symmetric: +beta and -beta phases, "
      "update over 2 beta; random-sign: one phase, the sign of beta drawn per batch from the seed")
    a("--activation-function", choices=ACTIVATION_NAMES, help="rho: sigm (centred sigmoid), hardsigm, tanh")
    a("--no-clamp", action="store_true", help="EB: do not clamp states to [0,1]")
    a("--toymodel", action="store_true", help="the toy model of Fig. 2 (--size_tab out hidden in)")
    a("--C_tab", "--c-tab", type=int, nargs="+", metavar="C",
      help="conv channels from the top conv down to the input (ends with 1); selects convEP")
    a("--padding", type=int, help="0: no padding; 1: same padding P = (Fconv-1)/2")
    a("--Fconv", "--f-conv", type=int, help="conv kernel size")
    a("--Fpool", "--f-pool", type=int, help="pooling kernel size = stride")
    # others
    a("--action", choices=ACTIONS, help="train, plotcurves (GDU processes) or receipe (sign agreement)")
    a("--device-label", type=int, help="-1 = CPU, N = cuda:N")
    a("--threads", type=int, help="torch CPU threads (default: OMP_NUM_THREADS if set, else 1 for the "
      "one-hidden-layer and toy nets, whose small products a second thread only slows, else torch's choice)")
    a("--seed", type=int, help="seeds torch, numpy, python and the data order (default: drawn and printed)")
    a("--data-dir", dflt=os.environ.get("EP_DATA_DIR", DEFAULTS.data_dir), metavar="DIR",
      help="MNIST root, <DIR>/MNIST/raw (env EP_DATA_DIR)")
    a("--results-dir", metavar="DIR", help="where result folders are created")
    a("--train-subset", type=int, metavar="N", help="use the first N training examples (default: all)")
    a("--test-subset", type=int, metavar="N", help="use the first N test examples (default: all)")
    a("--trials", type=int, help="receipe: number of random batches")
    a("--resume", metavar="FOLDER", help="continue the train Trial folder FOLDER from its last finished epoch")
    a("--quiet", action="store_true", help="no progress bar and no chatter (the result folder, the seed "
                                           "and the results are still printed)")
    a("--preset", metavar="NAME", help="set the flags of one of the paper's commands (see below)")
    a("--list-presets", action="store_true", help="list the presets with the flags they set, and exit")
    return p


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default in --help (help texts of flags without a fixed default say what happens);
    the epilog's examples kept as written."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "(default:" in h or action.default in (None, argparse.SUPPRESS) or action.option_strings == ["-h", "--help"]:
            return h
        d = _flag_value(action.default) if action.default != [] else "(empty)"
        return f"{h} (default: {d})"


def parse_args(argv):
    """defaults <- preset <- command line, as one Config; records which flags were set explicitly."""
    args = vars(make_parser().parse_args(argv))
    explicit = vars(make_parser(suppress=True).parse_args(argv))
    preset = {}
    if args["preset"] is not None:
        if args["preset"] not in PRESETS:
            raise UsageError(f"--preset: unknown preset {args['preset']!r} (see --list-presets)")
        preset = PRESETS[args["preset"]].flags
    for k, v in preset.items():
        if k not in explicit:
            args[k] = v
    args["explicit"] = sorted(set(explicit) | set(preset))
    args["training_method"] = METHODS[args["training_method"]]
    return paper_dt(Config(**args))


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def validate(args, epochs_done=0):
    """Every check before any work: raise UsageError naming the flag and what is expected."""
    kind = args.kind
    for flag, v, lo in [("--T", args.T, 1), ("--Kmax", args.Kmax, 1), ("--batch-size", args.batch_size, 1),
                        ("--test-batch-size", args.test_batch_size, 1), ("--epochs", args.epochs, 1),
                        ("--trials", args.trials, 1), ("--Fconv", args.Fconv, 1), ("--Fpool", args.Fpool, 1),
                        ("--padding", args.padding, 0), ("--device-label", args.device_label, -1)]:
        if v < lo:
            raise UsageError(f"{flag} must be >= {lo} (got {v})")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1 (got {args.threads})")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2^32) (got {args.seed})")
    if args.Kmax > args.T:
        raise UsageError(f"--Kmax must be <= --T (got Kmax {args.Kmax} > T {args.T})")
    if not (_finite(args.beta) and args.beta > 0):
        raise UsageError(f"--beta must be a finite number > 0 (got {args.beta})")
    if not (_finite(args.dt) and args.dt > 0):
        raise UsageError(f"--dt must be a finite number > 0 (got {args.dt})")
    if args.dt * (1 + args.beta) > 2:
        # the output's update s0 <- (1 - dt(1 + beta)) s0 + ... grows geometrically past this bound
        raise UsageError(f"--dt {args.dt:g} with --beta {args.beta:g}: dt*(1+beta) must be <= 2, else the "
                         f"nudged output oscillates with growing amplitude and the run can only diverge")
    for flag, v in [("--train-subset", args.train_subset), ("--test-subset", args.test_subset)]:
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be >= 1 (got {v})")
    if any(d < 1 for d in args.size_tab) or any(c < 1 for c in args.C_tab):
        raise UsageError("--size_tab and --C_tab entries must be >= 1")
    if kind == "toy":
        if len(args.size_tab) != 3:
            raise UsageError(f"--size_tab: the toy model expects 'out hidden in', e.g. 10 50 5 (got {args.size_tab})")
        if args.action == "train":
            raise UsageError("--toymodel has no dataset to train on: use --action plotcurves or receipe")
    elif kind == "fc":
        if len(args.size_tab) < 3 or args.size_tab[-1] != 784 or args.size_tab[0] != 10:
            raise UsageError(f"--size_tab expects 10 <hidden sizes> 784 (>= 1 hidden layer), got {args.size_tab}")
    else:
        if len(args.C_tab) < 2 or args.C_tab[-1] != 1:
            raise UsageError(f"--C_tab expects channels from the top conv down to the input ending in 1, e.g. 64 32 1 (got {args.C_tab})")
        if args.size_tab[0] != 10:
            raise UsageError(f"--size_tab for the conv net lists the classifier layers, starting with 10 (got {args.size_tab})")
        if args.padding and args.Fconv % 2 == 0:
            raise UsageError(f"--padding needs an odd --Fconv for same padding (got {args.Fconv})")
        from netClasses import conv_geometry
        try:
            conv_geometry(args.C_tab, args.size_tab, args.Fconv, args.Fpool, bool(args.padding))
        except ValueError as e:
            raise UsageError(f"--C_tab/--Fconv/--Fpool: {e}")
    if args.action == "train":
        n_layers = args.n_weight_layers
        if len(args.lr_tab) != n_layers:
            raise UsageError(f"--lr_tab needs {n_layers} learning rates (one per weight layer, output side first), got {len(args.lr_tab)}")
        if not all(_finite(lr) and lr > 0 for lr in args.lr_tab):
            raise UsageError(f"--lr_tab: every learning rate must be a finite number > 0 (got {args.lr_tab})")
        if args.epochs < epochs_done:
            raise UsageError(f"--epochs {args.epochs}: the run has already done {epochs_done} epochs "
                             f"(give a target >= {epochs_done})")
    if kind != "toy":
        n_train = min(args.train_subset or N_TRAIN, N_TRAIN)
        if args.batch_size > n_train:
            raise UsageError(f"--batch-size {args.batch_size} is larger than the {n_train} training examples"
                             + (f" of --train-subset {args.train_subset}" if args.train_subset else ""))
        n_test = min(args.test_subset or N_TEST, N_TEST)
        if args.action == "train" and "test_batch_size" in args.explicit and args.test_batch_size > n_test:
            raise UsageError(f"--test-batch-size {args.test_batch_size} is larger than the {n_test} test examples"
                             + (f" of --test-subset {args.test_subset}" if args.test_subset else ""))
    if args.device_label >= 0:
        import torch
        if not torch.cuda.is_available():
            raise UsageError(f"--device-label {args.device_label}: CUDA is not available on this machine (use -1 for CPU)")
        if args.device_label >= torch.cuda.device_count():
            raise UsageError(f"--device-label {args.device_label}: only {torch.cuda.device_count()} CUDA device(s)")
    if kind != "toy":
        dd = Path(args.data_dir)
        if dd.exists() and not (dd.is_dir() and os.access(dd, os.R_OK | os.X_OK)):
            raise UsageError(f"--data-dir {args.data_dir}: not a readable directory")
    rd = Path(args.results_dir)
    probe = rd
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        raise UsageError(f"--results-dir {args.results_dir}: not writable")


# ------------------------------------------------------------------------------------------------

def resolve_resume(args):
    """--resume FOLDER: the run's own Config from its config.json, with what only changes how it
    runs (--epochs to extend, --quiet, --device-label, --threads, --data-dir) from the command line.
    Any other flag that differs from the stored value is refused.  Reads only; nothing is written
    here (see record_resume).  Returns (cfg, checkpoint)."""
    folder = Path(args.resume)
    cfg_path, ck_path = folder / "config.json", folder / "checkpoint.pt"
    if not (cfg_path.is_file() and ck_path.is_file()):
        raise UsageError(f"--resume {args.resume}: not a result folder (needs config.json and checkpoint.pt)")
    try:
        saved = json.loads(cfg_path.read_text())["args"]
        if not isinstance(saved, dict) or not set(FIELDS) - {"threads", "nudging"} <= set(saved):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):
        raise UsageError(f"--resume {args.resume}: config.json is not this program's")
    if saved["action"] != "train":
        raise UsageError(f"--resume {args.resume}: only train runs can be resumed")
    given = [k for k in args.explicit if k not in RESUME_RUNTIME_FLAGS + RESUME_IGNORED_FLAGS]
    given.sort(key=lambda k: k != "preset")  # a preset is named as such, not by the first flag it sets
    for k in given:
        stored = saved.get(k, getattr(DEFAULTS, k))
        if getattr(args, k) != stored:
            raise UsageError(f"--resume: {OPTION.get(k, '--' + k)} would change the experiment (the folder has "
                             f"{_flag_value(stored)}); only --epochs, --quiet, --device-label, --threads and "
                             f"--data-dir may be given with --resume")
    import results as rs
    try:
        ck = rs.load_checkpoint(ck_path)
        if not {"epoch", "net", "results"} <= set(ck):
            raise KeyError
    except Exception:
        raise UsageError(f"--resume {args.resume}: checkpoint.pt is damaged or not this program's")
    cfg = Config(**{k: saved.get(k, getattr(DEFAULTS, k)) for k in FIELDS})
    runtime = {k: getattr(args, k) for k in RESUME_RUNTIME_FLAGS if k in args.explicit and k != "resume"}
    return cfg.replace(**{**runtime, "resume": str(folder), "quiet": args.quiet}), ck


def _flag_value(v):
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def record_resume(cfg):
    """After validation and data loading: the new epoch target goes into config.json and
    hyperparameters.txt (an interrupted extension keeps its target), and the resume itself, with
    how it runs, is appended to config.json's "resumed" list."""
    import results as rs
    folder = Path(cfg.resume)
    rec = json.loads((folder / "config.json").read_text())
    rec["args"]["epochs"] = cfg.epochs
    rec.setdefault("resumed", []).append(dict(
        at=datetime.datetime.now().isoformat(timespec="seconds"), epochs=cfg.epochs,
        device_label=cfg.device_label, threads=cfg.threads, quiet=cfg.quiet, data_dir=cfg.data_dir))
    rs.write_json(folder / "config.json", rec)
    hp = folder / "hyperparameters.txt"
    if hp.is_file():
        rs.atomic_write_text(hp, re.sub(r"(?m)^- number of epochs: .*$", f"- number of epochs: {cfg.epochs}",
                                        hp.read_text()))


def log_fn(args):
    return (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))


class FigureError(Exception):
    """The figures of plotcurves/receipe could not be drawn (the data is saved)."""


def run(args, ck=None):
    """Data, nets, result folder, then the action; figures rendered at the end of every action."""
    import torch

    import mnist
    import netFunctions as nf
    import plotFunctions
    import results as rs
    from netClasses import build_net

    log = print  # summary lines always print; --quiet silences the progress bar and the chatter
    chatter = log_fn(args)
    threads = thread_count(args)
    if threads:
        torch.set_num_threads(threads)
    drawn = args.seed is None
    if drawn:
        args.seed = random.SystemRandom().randrange(2**31)
    nf.set_seed(args.seed)
    device = torch.device("cpu" if args.device_label < 0 else f"cuda:{args.device_label}")

    # data before any folder is created or changed: a data problem writes nothing
    Xtr = Ytr = Xte = Yte = None
    if not args.toymodel:
        flat = not args.C_tab
        Xtr, Ytr = mnist.load_mnist(args.data_dir, True, args.train_subset, flat, device, log=chatter)
        if args.action == "train":
            Xte, Yte = mnist.load_mnist(args.data_dir, False, args.test_subset, flat, device, log=chatter)

    torch.manual_seed(args.seed)
    net = build_net(args).to(device)
    net_bptt = None
    if args.action == "train" and args.benchmark:
        net_bptt = build_net(args).to(device)
        net_bptt.load_state_dict(net.state_dict())  # identical initial weights
    if ck is not None:
        path, name = Path(args.resume), rs.model_name(args)
        net.load_state_dict(ck["net"])
        if net_bptt is not None:
            net_bptt.load_state_dict(ck["net_bptt"])
        record_resume(args)
    else:
        path, name = rs.createPath(args, args.results_dir)
        rs.createHyperparameterfile(path, name, args)
        rs.write_config(path, args, device)
    log(f"results in {path}", flush=True)
    log(f"seed {args.seed}" + (" (drawn; pass --seed to repeat the run)" if drawn else ""), flush=True)
    title = describe(args, net)

    try:
        if args.action == "train":
            nf.train_run(args, net, net_bptt, (Xtr, Ytr, Xte, Yte), path, name, title, ck, log)
        elif args.action == "plotcurves":
            plotcurves(args, net, Xtr, Ytr, device, path, name, title, log)
        else:
            batches = (sample_batch(args, Xtr, Ytr, t, device, net) for t in range(args.trials))
            signs = nf.nudge_signs(args.seed, 0, args.trials) if args.nudging == "random-sign" else None
            res = nf.receipe(net, batches, log=log, nudging=args.nudging, signs=signs)
            res.update(action="receipe", model=name, title=title, seed=args.seed)
            rs.write_json(path / "receipe.json", res)
            rs.write_json(path / "results.json", res)
    except KeyboardInterrupt:
        interrupted(args, path, ck is not None)
        return 130
    try:
        written = plotFunctions.render(path)
        chatter("figures: " + ", ".join(str(Path(w).name) for w in written))
    except Exception as e:
        msg = (f"figures not rendered ({' '.join(str(e).split()) or type(e).__name__}); the data is complete in "
               f"{path}: re-render with `cd {path} && python plotFunctions.py`")
        if args.action != "train":  # for plotcurves and receipe the figures are the product
            raise FigureError(msg)
        log(f"warning: {msg}")  # a training run's product is its numbers, already saved
    return 0


def thread_count(cfg):
    """The thread policy (README, Performance): --threads; else OMP_NUM_THREADS, which torch honours
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


def interrupted(args, path, resumed):
    """Ctrl-C: say where the run stands.  A folder with no finished epoch (or an unfinished
    plotcurves/receipe) cannot be resumed: it is removed rather than left behind."""
    if args.action == "train" and (path / "checkpoint.pt").is_file():
        done = json.loads((path / "results.json").read_text()).get("epochs_done", "?")
        print(f"main.py: interrupted after {done} finished epoch(s); resume with: python main.py --resume {path}",
              file=sys.stderr)
    elif not resumed:
        shutil.rmtree(path, ignore_errors=True)
        print(f"main.py: interrupted before anything was finished; removed {path}", file=sys.stderr)


def plotcurves(args, net, X, Y, device, path, name, title, log):
    """The GDU processes of one random batch: curves.npz, metrics in results.json.  A function of
    its own so that the (large, for EB-3h) tensors are freed before the figures are rendered."""
    import netFunctions as nf
    import plotFunctions
    import results as rs
    x, y = sample_batch(args, X, Y, 0, device, net)
    t0 = time.perf_counter()
    sign = nf.nudge_signs(args.seed, 0, 1)[0] if args.nudging == "random-sign" else 1
    curves = [[t.cpu().numpy() for t in c] for c in nf.compute_nSdSDT(net, x, y, args.nudging, sign)]
    secs = time.perf_counter() - t0
    rs.save_curves(path, *curves)
    metrics = plotFunctions.gdu_metrics(*curves, net.neuron_names, net.synapse_names)
    rs.write_json(path / "results.json", dict(
        action="plotcurves", model=name, title=title, toymodel=bool(args.toymodel), conv=bool(args.C_tab),
        T=args.T, Kmax=args.Kmax, beta=args.beta, batch_size=args.batch_size, seed=args.seed,
        neuron_names=net.neuron_names, synapse_names=net.synapse_names, metrics=metrics, seconds=secs))
    print_metrics(metrics, log)
    log(f"plotcurves: {secs:.1f} s")


def sample_batch(args, X, Y, trial, device, net):
    """A random batch (seeded): MNIST for the nets, uniform x and one shared class for the toy."""
    import torch
    g = torch.Generator().manual_seed(args.seed * 1009 + trial)
    dtype = net.layers[0].weight.dtype
    if X is None:
        x = torch.rand(args.batch_size, args.size_tab[-1], generator=g, dtype=dtype)
        y = torch.zeros(args.batch_size, args.size_tab[0], dtype=dtype)
        y[:, torch.randint(args.size_tab[0], (1,), generator=g)] = 1
        return x.to(device), y.to(device)
    idx = torch.randperm(X.shape[0], generator=g)[: args.batch_size].to(X.device)
    return X[idx], Y[idx]


def describe(args, net):
    sizes = "-".join(str(d) for d in reversed(net.size_tab))
    if args.C_tab:
        sizes = f"conv C{'-'.join(map(str, reversed(args.C_tab)))} -> fc {'-'.join(map(str, reversed(args.size_tab)))}"
    dt = "" if args.discrete or args.C_tab else f", dt={args.dt:g}"
    return (f"{type(net).__name__} {sizes} ({args.activation_function}), T={args.T}, K={args.Kmax}, "
            f"beta={args.beta:g}{dt}")


def print_metrics(metrics, log):
    log(f"{'layer':>10} {'RMSE':>8} {'cos(total)':>11} {'cos(process)':>13} {'cos(steps)':>11} {'sign agree':>11}")
    for group in ("neurons", "synapses"):
        for n, m in metrics[group].items():
            log(f"{n:>10} {m['rmse']:8.3f} {m['cos_total']:11.3f} {m['cos_process']:13.3f} {m['cos_steps']:11.3f}"
                f" {m['sign_agree']:10.1f}%")


def preset_command(flags):
    """The command line a preset stands for, with the flags' own spelling."""
    if not OPTION:
        make_parser()
    return " ".join(OPTION[f] + ("" if v is True else " " + _flag_value(v)) for f, v in flags.items())


def list_presets():
    for k, p in PRESETS.items():
        print(f"{k:12s} {p.title:40s} {preset_command(p.flags)}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv:
            raise UsageError("no experiment given: run one of the paper's commands with --preset NAME "
                             "(python main.py --list-presets), or see python main.py --help")
        args = parse_args(argv)
        if args.list_presets:
            list_presets()
            return 0
        ck, done = None, 0
        if args.resume:
            args, ck = resolve_resume(args)
            done = ck["epoch"]
        validate(args, epochs_done=done)
    except UsageError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 2
    import mnist
    import netFunctions as nf
    try:
        return run(args, ck)
    except mnist.DataError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 2
    except nf.Divergence as e:
        print(f"main.py: {e}", file=sys.stderr)
        return 3
    except FigureError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the result folder exists: nothing was written
        print("main.py: interrupted before the run started; nothing written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python main.py ... | head`: stop quietly, results are already on disk
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
