"""Figures for "Updates of Equilibrium Prop Match Gradients of
Backprop Through Time in an RNN with Static Input" (Ernoult et al., 2019).

Usage:  python plotFunctions.py [FOLDER] [--show]

Reads FOLDER/results.json (and curves.npz for action "plotcurves") and writes
error.png | S.png, T.png, hist.png | receipe.png into FOLDER.  --show also opens
them, where a display exists; elsewhere it says so in one line (exit 0).

Only numpy, matplotlib, the stdlib and metrics.py (numpy only, copied beside
this file into every result folder) are imported, never torch, so figures of a
finished run can be redrawn on any machine.  The conventions of the processes
(nS, dS, NT, DT) are in metrics.py.
"""
import argparse
import functools
import json
import os
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

# metrics.py lies beside this file, in the repository and in every result folder, however it is started
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metrics import compute_Hist, compute_nTdT  # noqa: E402

DPI = 110
STYLE = {"font.size": 10, "axes.titlesize": 10, "legend.fontsize": 9}


def _styled(fn):
    """Apply STYLE to one figure without touching the caller's rcParams."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


# -------------------------------------------------------------------- plotting
def _tex(name):
    """'s^0' -> '$s^0$' so that layer names render as mathtext."""
    return name if "$" in name else f"${name}$"


def _suptitle(title, T=None, Kmax=None, beta=None):
    extra = ", ".join(f"{k}={v}" for k, v in (("T", T), ("K", Kmax), (r"$\beta$", beta))
                      if v is not None)
    if title and "T=" in title:  # the caller's title already names T, K and beta
        return title
    return f"{title}  ({extra})" if title and extra else (title or extra)


def _pick(a, b, n, rng, first=False):
    """Indices of n components (flattened trailing dims) to display. Prefer
    components that move at all: MNIST border pixels never fire, so their
    synapses would only give flat lines at 0."""
    size = int(np.prod(a.shape[1:]))
    if first:
        return np.arange(min(n, size))
    alive = np.flatnonzero(np.any(a.reshape(len(a), -1) != 0, 0) |
                           np.any(b.reshape(len(b), -1) != 0, 0))
    pool = alive if alive.size >= n else np.arange(size)
    return np.sort(rng.choice(pool, size=min(n, pool.size), replace=False))


def _grid(n):
    ncols = 1 if n == 1 else 2
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 3.2 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _curves(BP, EP, names, picks, symbol, xlabel, suptitle):
    """One subplot per layer: solid = BPTT, dashed = EP, same colour per component."""
    fig, axes = _grid(len(names))
    for ax, a, b, name, n in zip(axes, BP, EP, names, picks):
        a = np.asarray(a).reshape(len(a), -1)
        b = np.asarray(b).reshape(len(b), -1)
        k = np.arange(len(a))
        for j, idx in enumerate(n):
            c = f"C{j % 10}"
            ax.plot(k, a[:, idx], "-", color=c, lw=1.6)
            ax.plot(k, b[:, idx], "--", color=c, lw=1.6)
        nm = name.strip("$")
        ax.set_title(rf"${nm}$:  $\Delta^{{EP}}_{{{nm}}}$ (dashed) vs $-\nabla^{{BPTT}}_{{{nm}}}$ (solid)",
                     fontsize=11)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
    axes[0].legend([Line2D([], [], color="k", ls="-"), Line2D([], [], color="k", ls="--")],
                   ["BPTT", "EP"], loc="best", framealpha=0.8)
    fig.suptitle(suptitle + f"\nsolid = BPTT, dashed = EP; one colour per {symbol}",
                 fontsize=10)
    fig.tight_layout()
    return fig


@_styled
def plot_S(nS, dS, neuron_names, title="", T=None, Kmax=None, beta=None,
           output_layer=0, seed=0):
    """Neuron processes (Fig. 2/3 of the paper): 5 units per fc layer (units 0-4
    of the output layer s^0, random ones elsewhere), 8 random (c,h,w) positions
    per conv layer; RandomState(seed) makes figures reproducible."""
    rng = np.random.RandomState(seed)
    picks = []
    for i, (a, b) in enumerate(zip(nS, dS)):
        conv = np.ndim(a) >= 4
        picks.append(_pick(np.asarray(a), np.asarray(b), 8 if conv else 5, rng,
                           first=(i == output_layer and not conv)))
    return _curves(nS, dS, neuron_names, picks, "unit",
                   "k (steps back from T / nudged step)", _suptitle(title, T, Kmax, beta))


@_styled
def plot_T(nT, dT, synapse_names, title="", T=None, Kmax=None, beta=None,
           toymodel=False, seed=0):
    """Instantaneous synapse processes (zero_first=True convention): 10 random
    synapses per fc layer, 5 for the toy model and for conv kernels."""
    rng = np.random.RandomState(seed)
    picks = [_pick(np.asarray(a), np.asarray(b),
                   5 if (toymodel or np.ndim(a) >= 5) else 10, rng)
             for a, b in zip(nT, dT)]
    return _curves(nT, dT, synapse_names, picks, "synapse",
                   "k (steps back from T / nudged step)", _suptitle(title, T, Kmax, beta))


@_styled
def plot_Hist(rmse_neurons, rmse_synapses, neuron_names, synapse_names, title=""):
    """Bar chart of the relative RMSE per layer: neurons, a gap, then synapses."""
    nn, ns = len(rmse_neurons), len(rmse_synapses)
    x = list(range(nn)) + [nn + 1 + i for i in range(ns)]
    vals = list(rmse_neurons) + list(rmse_synapses)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(x) + 2), 4.0))
    bars = ax.bar(x, vals, width=0.7, color=["tab:blue"] * nn + ["tab:green"] * ns)
    ax.bar_label(bars, labels=[f"{v:.2g}" for v in vals], fontsize=9, padding=2)
    ax.set_xticks(x, [_tex(n) for n in list(neuron_names) + list(synapse_names)], fontsize=11)
    ax.set_ylabel("RMSE")
    ax.set_ylim(0, max(vals + [1e-12]) * 1.5)  # headroom for the legend
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="tab:blue"),
                       plt.Rectangle((0, 0), 1, 1, color="tab:green")],
              labels=[r"neurons ($\Delta^{EP}_s$ vs $-\nabla^{BPTT}_s$)",
                      r"synapses, cumulated ($\Delta^{EP}_W$ vs $-\nabla^{BPTT}_W$)"],
              loc="upper left", framealpha=0.8)
    ax.set_title((title + "\n" if title else "") + "Relative RMSE between EP updates and BPTT gradients")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


@_styled
def plot_results(what, error_train_tab, error_test_tab, error_train_bptt_tab=None,
                 error_test_bptt_tab=None, title="", method="EP"):
    """Error rate (%) per epoch; what='error'. Solid = test, dashed = train;
    blue = EP, orange = BPTT (the --benchmark net, if given)."""
    if what != "error":
        raise ValueError(f"unknown plot '{what}'")
    colours = {"EP": "tab:blue", "BPTT": "tab:orange"}
    runs = [(method, error_train_tab, error_test_tab)]
    if error_train_bptt_tab is not None or error_test_bptt_tab is not None:
        runs.append(("BPTT", error_train_bptt_tab or [], error_test_bptt_tab or []))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, train, test in runs:
        c = colours.get(name, "tab:green")
        for tab, ls, split in ((test, "-", "test"), (train, "--", "train")):
            if len(tab):
                ax.plot(np.arange(1, len(tab) + 1), tab, ls, marker="o", ms=5, color=c,
                        label=f"{name} {split} ({tab[-1]:.2f} %)")
    if not ax.lines:
        ax.text(0.5, 0.5, "no finished epoch", ha="center", transform=ax.transAxes)
    else:
        ax.legend(framealpha=0.8)
    n_ep = max([len(t) for _, tr, te in runs for t in (tr, te)] + [1])
    ax.set_xlim(0.5, n_ep + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error rate (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_title(title or "Error rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@_styled
def plot_receipe(layer_names, mean, std, title="", trials=None):
    """% of synapses whose EP update and BPTT gradient agree in sign
    (same_sign_total) per layer, mean +- std over trials; 50 % is chance."""
    m, s = np.asarray(mean, float), np.asarray(std, float)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(m) + 2), 4.2))
    x = np.arange(len(m))
    ax.bar(x, m, yerr=s, capsize=5, width=0.6, color="tab:purple")
    for xi, v, e in zip(x, m, s):  # value at the bar's foot: clear of the 50 % line
        ax.text(xi, 3, f"{v:.1f} ± {e:.1f}", ha="center", va="bottom", color="white", fontsize=9)
    ax.axhline(50, color="k", ls="--", lw=1.2)
    ax.text(1.01, 50, "chance", transform=ax.get_yaxis_transform(), va="center", fontsize=9)
    ax.set_xticks(x, [_tex(n) for n in layer_names], fontsize=11)
    ax.set_ylim(0, 105)
    ax.set_ylabel("synapses with same sign (%)")
    sub = "EP update vs BPTT gradient sign agreement" + (f" ({trials} trials)" if trials else "")
    ax.set_title((title + "\n" if title else "") + sub)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- driver
def _non_interactive_backends():
    try:  # matplotlib >= 3.9
        from matplotlib.backends import BackendFilter, backend_registry
        return set(backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE))
    except ImportError:
        from matplotlib import rcsetup
        return {b.lower() for b in rcsetup.non_interactive_bk}


def display_problem():
    """Why figures cannot be shown on this machine, or None if they can.

    Without a display (Linux: neither DISPLAY nor WAYLAND_DISPLAY) matplotlib
    falls back to Agg, and with Agg (or any non-interactive backend) plt.show()
    returns at once having shown nothing: the user must be told instead."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: DISPLAY and WAYLAND_DISPLAY are unset"
    backend = matplotlib.get_backend()
    if backend.lower() in _non_interactive_backends():
        return f"matplotlib's backend {backend} is non-interactive"
    return None


def render(folder, show=False):
    """Draw the figures of FOLDER/results.json; returns the written PNG paths.

    Switches to the Agg backend when show is False and no figure is open, so
    that a training run on a headless machine can call it."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no results.json in {folder!r}")
    with open(path) as f:
        res = json.load(f)
    if not show and not plt.get_fignums():
        matplotlib.use("Agg")
    action, title = res.get("action"), res.get("title", "")
    figs = {}
    if action == "train":
        figs["error.png"] = plot_results(
            "error", res.get("error_train_tab", []), res.get("error_test_tab", []),
            res.get("error_train_bptt_tab"), res.get("error_test_bptt_tab"),
            title=title, method=res.get("method", "EP"))
    elif action == "plotcurves":
        nn, ns = res["neuron_names"], res["synapse_names"]
        with np.load(os.path.join(folder, "curves.npz")) as z:
            nS = [z[f"nS_{i}"] for i in range(len(nn))]
            dS = [z[f"dS_{i}"] for i in range(len(nn))]
            NT = [z[f"NT_{i}"] for i in range(len(ns))]
            DT = [z[f"DT_{i}"] for i in range(len(ns))]
        kw = dict(title=title, T=res.get("T"), Kmax=res.get("Kmax"), beta=res.get("beta"))
        figs["S.png"] = plot_S(nS, dS, nn, **kw)
        nT, dT = compute_nTdT(NT, DT, zero_first=True)
        figs["T.png"] = plot_T(nT, dT, ns, toymodel=bool(res.get("toymodel")), **kw)
        figs["hist.png"] = plot_Hist(*compute_Hist(nS, dS, NT, DT), nn, ns, title=title)
    elif action == "receipe":
        figs["receipe.png"] = plot_receipe(res["layer_names"], res["mean"]["same_sign_total"],
                                           res["std"]["same_sign_total"], title=title,
                                           trials=res.get("trials"))
    else:
        raise ValueError(f"unknown action {action!r} in {path}")
    written = []
    for name, fig in figs.items():
        out = os.path.join(folder, name)
        fig.savefig(out, dpi=DPI)
        written.append(out)
        if not show:
            plt.close(fig)
    if show:
        plt.show()
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render the figures of a result folder.")
    parser.add_argument("folder", nargs="?", default=".", help="result folder (default: .)")
    parser.add_argument("--show", action="store_true", help="also open the figures")
    args = parser.parse_args(argv)
    why_not = display_problem() if args.show else None
    show = args.show and why_not is None
    if not show:
        matplotlib.use("Agg")
    try:
        for p in render(args.folder, show=show):
            print(p)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        msg = str(e).replace("\n", " ")
        print(f"plotFunctions: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2
    if why_not:  # the PNGs are the result: --show was only a wish, not a failure
        print(f"plotFunctions: cannot show the figures here ({why_not}); "
              f"the PNGs are saved in {os.path.abspath(args.folder)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
