"""Command line of the reproduction of Ernoult et al. (NeurIPS 2019): parse the flags into one
Config and hand it to the experiment API (experiment.run), which checks every value before any work.

    python main.py --preset P-1h --seed 1                 # a Table-1 row (EP and BPTT benchmark)
    python main.py --preset fig2-toy                      # the toy model's GDU curves (Fig. 2)
    python main.py --action receipe --preset fig3-P-1h    # sign agreement, to tune T, K, beta
    python main.py --list-presets

Flags keep the original's names, meanings and defaults (README), except --device-label (default -1,
CPU) and the fixes listed under "Deviations" in the README.  This file is the command line only:
checks, the run and its files are experiment.py's.
"""
import argparse
import difflib
import os
import re
import sys

import experiment
from config import ACTIONS, ACTIVATION_NAMES, DEFAULTS, METHODS, NUDGINGS, PRESETS, Config, flag_name, paper_dt
from experiment import FigureError, UsageError, ignored_flags


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2, no usage block, a suggestion for a near-miss flag);
    reproduce.py's parser is one too."""

    def error(self, message):  # one line, no usage block; a near miss gets a suggestion
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            flag = m.group(1).split("=")[0]
            near = difflib.get_close_matches(flag, self._option_string_actions, n=1, cutoff=0.6)
            if near:
                message += f" (did you mean {near[0]}?)"
        raise UsageError(message)



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
    p = Parser(prog="main.py", description="EP vs BPTT (Ernoult et al. 2019): train, plotcurves (GDU processes)\n"
                "and receipe (sign agreement) on the paper's four networks.", epilog=EPILOG,
                allow_abbrev=False, formatter_class=HelpFormatter, **kw)

    def a(*flags, dflt=None, **kwargs):
        dest = kwargs.pop("dest", flags[0].lstrip("-").replace("-", "_"))
        assert flag_name(dest) == flags[0], (dest, flags[0])  # error messages spell flags as here
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default in --help (help texts of flags without a fixed default say what happens);
    the epilog's examples kept as written."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "(default:" in h or action.default in (None, argparse.SUPPRESS) or action.option_strings == ["-h", "--help"]:
            return h
        d = _flag_value(action.default) if action.default != [] else "(empty)"
        return f"{h} (default: {d})"


def parse_args(argv):
    """defaults <- preset <- command line, as one Config; records which flags were set explicitly.
    A preset's flag that the chosen model or action does not use (its epochs under --action
    plotcurves, say) is left out, so that the run records only what it runs."""
    args = vars(make_parser().parse_args(argv))
    given = vars(make_parser(suppress=True).parse_args(argv))
    preset = {}
    if args["preset"] is not None:
        if args["preset"] not in PRESETS:
            raise UsageError(f"--preset: unknown preset {args['preset']!r} (see --list-presets)")
        preset = PRESETS[args["preset"]].flags
    for k, v in preset.items():
        if k not in given:
            args[k] = v
    args["explicit"] = sorted(set(given) | set(preset))
    args["training_method"] = METHODS[args["training_method"]]
    cfg = paper_dt(Config(**args))
    unused = {k for k, _ in ignored_flags(cfg) if k in preset and k not in given}
    if unused:
        cfg = paper_dt(cfg.replace(explicit=[k for k in cfg.explicit if k not in unused],
                                   **{k: getattr(DEFAULTS, k) for k in unused}))
    return cfg


def _flag_value(v):
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def preset_command(flags):
    """The command line a preset stands for, with the flags' own spelling."""
    return " ".join(flag_name(f) + ("" if v is True else " " + _flag_value(v)) for f, v in flags.items())


def list_presets():
    for k, p in PRESETS.items():
        print(f"{k:12s} {p.title:40s} {preset_command(p.flags)}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv:
            raise UsageError("no experiment given: run one of the paper's commands with --preset NAME "
                             "(python main.py --list-presets), or see python main.py --help")
        cfg = parse_args(argv)
        if cfg.list_presets:
            list_presets()
            return 0
        outcome = experiment.run(cfg, argv=["main.py"] + argv)
    except UsageError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 2
    except FigureError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the result folder exists: nothing was written
        print("main.py: interrupted before the run started; nothing written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python main.py ... | head`: stop quietly, results are already on disk
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if outcome.code:
        print(f"main.py: {outcome.message}", file=sys.stderr)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
