"""EP's update against BPTT's gradient along training: per layer, per nudging, per output unit
saturated or not.  What separates the P-1h runs that drift (one-sided, odd K) from those that do not?

Each run trains a prototypical preset (P-1h unless told), EP only, one seed, with its K and nudging --
batch for batch the run of `main.py --preset P-1h --no-benchmark --seed S --Kmax K --nudging N`.  At
initialisation and after every epoch, on the first --images training images (batches of 20, as in
training), it measures against the truncated-BPTT gradient g (window K) four estimates of -g:

    plus          (1/beta)  [dPhi(s^+beta(T+K)) - dPhi(s(T))]   one-sided EP, the paper's update
    minus         (-1/beta) [dPhi(s^-beta(T+K)) - dPhi(s(T))]   random-sign's other draw
    symmetric     (1/2beta) [dPhi(s^+beta) - dPhi(s^-beta)]     = the mean of plus and minus
    continuation  (1/beta)  [dPhi(s(T+K)) - dPhi(s(T))]         no nudge at all: K more free steps

(the continuation part is inside plus and minus with opposite signs, and cancels in symmetric):
per weight layer (weights and bias together) the cosine with -g and the norm ratio |estimate| / |g|,
each averaged over the batches; and for the output couplings W_01, split by (image, output unit)
pairs whose output sits saturated (rho'(h_0) < SATURATED) or not, the same two numbers over the
rows of those pairs summed over all images, with the fraction of saturated pairs.  Per-image
contributions need per-image gradients, so the probe runs image by image (the dynamics of the images
in a batch are independent; a batch's estimate is the mean of its images').

After every epoch each run's weights are checkpointed under --checkpoints, so the same command run
again continues where it was cut.

    python experiments/agreement.py --seed 1 --epochs 12
    python experiments/agreement.py --figure docs/table1/experiments/agreement/agreement.json
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import metrics  # noqa: E402
import mnist  # noqa: E402
import netFunctions as nf  # noqa: E402
import results as rs  # noqa: E402
from config import NUDGINGS, preset_config  # noqa: E402
from netClasses import build_net  # noqa: E402

SATURATED = 0.1  # rho'(h_0) below this (the sigmoid's slope is 1 at its centre): s_0 < 0.026 or > 0.974
ESTIMATES = ("plus", "minus", "symmetric", "continuation")
RUNS = ("15:one-sided", "14:one-sided", "15:symmetric", "15:random-sign")  # K 15: the README's, drifts


class Estimates(NamedTuple):
    plus: list
    minus: list
    symmetric: list
    continuation: list


@torch.no_grad()
def estimates(net, x, y):
    """The four estimates of -dL/dtheta on one batch, and the free state s(T)."""
    b, ctx = net.beta, net.context(x)
    seq = net.free_phase(x, ctx=ctx)
    s_plus = net.nudged_phase(x, seq, y, ctx=ctx)
    s_minus = net.nudged_phase(x, seq, y, beta=-b, ctx=ctx)
    s_cont = net.run_steps(seq, ctx, net.Kmax)
    return seq, Estimates(plus=net.computeGradients(b, x, s_plus, seq),
                          minus=net.computeGradients(-b, x, s_minus, seq),
                          symmetric=net.computeGradients(2 * b, x, s_plus, s_minus),
                          continuation=net.computeGradients(b, x, s_cont, seq))


@torch.no_grad()
def output_saturated(net, x, s):
    """(B, d_0) bool: rho'(h_0) < SATURATED at the free state s, h_0 what the output layer receives."""
    P = net.param_list()
    h0 = net.pre([net.phi(t) for t in s], net.drive(x, P), P, 0)
    return net.rhop(h0) < SATURATED


def layer_vectors(grads, n_layers):
    """Weight and bias of each layer as one flat vector: [(d_n * d_n+1 + d_n,)] * n_layers."""
    return [torch.cat([grads[2 * l].flatten(), grads[2 * l + 1].flatten()]) for l in range(n_layers)]


def probe(net, X, Y, batch=20):
    """The measurements above on images X (one dict, JSON-ready)."""
    L = net.n_weight_layers
    cos = {e: [[] for _ in range(L)] for e in ESTIMATES}
    ratio = {e: [[] for _ in range(L)] for e in ESTIMATES}
    split = {e: torch.zeros(2, *net.layers[0].weight.shape) for e in ESTIMATES}  # [unsaturated, saturated]
    split_g = torch.zeros(2, *net.layers[0].weight.shape)
    n_sat, n_pairs, wrong = 0, 0, 0
    for i in range(0, X.shape[0], batch):
        acc = {e: [torch.zeros_like(p) for p in net.param_list()] for e in ESTIMATES}
        acc_g = [torch.zeros_like(p) for p in net.param_list()]
        for j in range(i, min(i + batch, X.shape[0])):
            x, y = X[j:j + 1], Y[j:j + 1]
            seq, est = estimates(net, x, y)
            _, _, g = net.bptt_grads(x, y)
            g = [t.detach() for t in g]
            sat = output_saturated(net, x, seq)[0]  # (d_0,)
            n_sat, n_pairs = n_sat + int(sat.sum()), n_pairs + sat.numel()
            wrong += int(seq[0].argmax(1) != y.argmax(1))
            masks = torch.stack([~sat, sat]).unsqueeze(-1).float()  # (2, d_0, 1): rows of W_01
            for e in ESTIMATES:
                for a, t in zip(acc[e], getattr(est, e)):
                    a += t
                split[e] += masks * getattr(est, e)[0]
            for a, t in zip(acc_g, g):
                a += t
            split_g += masks * g[0]
        minus_g = [-v for v in layer_vectors(acc_g, L)]
        for e in ESTIMATES:
            for l, (v, w) in enumerate(zip(layer_vectors(acc[e], L), minus_g)):
                cos[e][l].append(metrics.cosine(v.numpy(), w.numpy()))
                ratio[e][l].append(float(v.norm() / w.norm()))
    out = dict(train_error_probe=100.0 * wrong / X.shape[0], saturated_fraction=n_sat / n_pairs,
               layers=list(net.synapse_names))
    for e in ESTIMATES:
        out[e] = dict(cos=[float(np.mean(c)) for c in cos[e]], ratio=[float(np.mean(r)) for r in ratio[e]])
        for k, name in enumerate(("unsaturated", "saturated")):
            v, w = split[e][k].flatten(), -split_g[k].flatten()
            out[e][name] = dict(cos=metrics.cosine(v.numpy(), w.numpy()) if w.norm() > 0 else None,
                                ratio=float(v.norm() / w.norm()) if w.norm() > 0 else None)
    return out


def parse_run(spec):
    """"K:nudging" -> (K, nudging), or ValueError."""
    k, _, nudging = spec.partition(":")
    if not k.isdigit() or int(k) < 1 or nudging not in NUDGINGS:
        raise ValueError(f"--runs: {spec!r} is not K:NUDGING (K >= 1, NUDGING one of {', '.join(NUDGINGS)})")
    return int(k), nudging


def train(a, runs):
    torch.set_num_threads(1)
    quiet = dict(log=lambda *a, **k: None)
    Xtr, Ytr = mnist.load_mnist("data", True, None, True, torch.device("cpu"), **quiet)
    Xte, Yte = mnist.load_mnist("data", False, None, True, torch.device("cpu"), **quiet)
    Xp, Yp = Xtr[:a.images], Ytr[:a.images]
    out, ckdir = Path(a.out), Path(a.checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    ckdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for K, nudging in runs:
        cfg = preset_config(a.preset, seed=a.seed, benchmark=False, Kmax=K, nudging=nudging)
        nf.set_seed(a.seed)
        torch.manual_seed(a.seed)  # the initial weights of a single run with this seed
        net = build_net(cfg)
        row = dict(preset=a.preset, seed=a.seed, Kmax=K, nudging=nudging, beta=cfg.beta, T=cfg.T,
                   images=a.images, epochs=[])
        ck = ckdir / f"{a.preset}-K{K}-{nudging}-seed{a.seed}.pt"
        if ck.is_file():  # resume: the weights and the rows after the last finished epoch
            saved = rs.load_checkpoint(ck)
            net.load_state_dict(saved["net"])
            row = saved["results"]
        rows.append(row)
        for e in range(len(row["epochs"]), a.epochs + 1):
            t0 = time.perf_counter()
            rec = dict(epoch=e, train_error=None, test_error=None)
            if e > 0:  # epoch 0: the initial weights
                rec["train_error"] = nf.train(net, Xtr, Ytr, "EP", 20, a.seed, e, quiet=True, nudging=nudging)[0]
                rec["test_error"] = nf.evaluate(net, Xte, Yte)
            rec.update(probe(net, Xp, Yp))
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            row["epochs"].append(rec)
            own = own_estimate(nudging)
            print(f"{a.preset} K {K} {nudging} epoch {e}: train {rec['train_error']} test {rec['test_error']}  "
                  f"cos {' '.join(f'{c:.3f}' for c in rec[own]['cos'])}  |EP|/|g| "
                  f"{' '.join(f'{r:.2f}' for r in rec[own]['ratio'])}  |cont|/|g| "
                  f"{' '.join(f'{r:.2f}' for r in rec['continuation']['ratio'])}  "
                  f"saturated {100 * rec['saturated_fraction']:.1f} %", flush=True)
            rs.save_checkpoint(ck, e, net, None, row)
            rs.write_json(out / "agreement.json", dict(
                command=" ".join(["python", "experiments/agreement.py", *sys.argv[1:]]), runs=rows))


def own_estimate(nudging):
    """The estimate a run of this nudging trains with (random-sign: plus or minus, drawn per batch)."""
    return "symmetric" if nudging == "symmetric" else "plus"


def figure(path, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from figures import log_error_axis, save

    runs = json.loads(Path(path).read_text())["runs"]
    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    ax = ax.flatten()
    for r in runs:
        lab = f"K {r['Kmax']} {r['nudging']}"
        eps = r["epochs"]
        ep = [x["epoch"] for x in eps]
        own = own_estimate(r["nudging"])
        line, = ax[0].plot(ep[1:], [x["train_error"] for x in eps[1:]], "o-", ms=3, label=lab)
        c = line.get_color()
        ax[1].plot(ep, [x[own]["cos"][0] for x in eps], "o-", ms=3, c=c, label=f"{lab}: {own}, W_01")
        ax[1].plot(ep, [x[own]["cos"][1] for x in eps], "s--", ms=3, c=c, alpha=0.6)
        ax[2].plot(ep, [x[own]["ratio"][0] for x in eps], "o-", ms=3, c=c, label=lab)
        ax[2].plot(ep, [x[own]["ratio"][1] for x in eps], "s--", ms=3, c=c, alpha=0.6)
        ax[3].plot(ep, [x["continuation"]["ratio"][0] for x in eps], "o-", ms=3, c=c, label=lab)
        ax[3].plot(ep, [x["continuation"]["ratio"][1] for x in eps], "s--", ms=3, c=c, alpha=0.6)
        ax[4].plot(ep, [x[own]["saturated"]["ratio"] for x in eps], "o-", ms=3, c=c, label=f"{lab}: saturated")
        ax[4].plot(ep, [x[own]["unsaturated"]["ratio"] for x in eps], "s--", ms=3, c=c, alpha=0.6)
        ax[5].plot(ep, [100 * x["saturated_fraction"] for x in eps], "o-", ms=3, c=c, label=lab)
    log_error_axis(ax[0], xlabel="epoch", ylabel="train error (%)", title="training error")
    ax[1].set(xlabel="epoch", ylabel="cos(EP update, -BPTT grad)",
              title="cosine, the run's own update (solid W_01, dashed W_1x)")
    ax[2].set(yscale="log", xlabel="epoch", ylabel="|EP update| / |BPTT grad|", title="norm ratio (solid W_01, dashed W_1x)")
    ax[3].set(yscale="log", xlabel="epoch", ylabel="|continuation part| / |BPTT grad|",
              title="K more free steps, / beta (solid W_01, dashed W_1x)")
    ax[4].set(yscale="log", xlabel="epoch", ylabel="|EP rows| / |BPTT rows|",
              title="W_01 rows of saturated (solid) / unsaturated (dashed) outputs")
    ax[5].set(xlabel="epoch", ylabel="% of (image, output unit) pairs", title=f"outputs saturated, rho'(h_0) < {SATURATED}")
    for a_ in ax:
        a_.grid(alpha=0.3, which="both")
        a_.legend(fontsize=7)
    save(fig, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("P-1h", "P-1h-T30K10", "P-2h"), default="P-1h")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--images", type=int, default=500, help="probe images: the first N of the training set")
    p.add_argument("--runs", nargs="+", default=list(RUNS), metavar="K:NUDGING")
    p.add_argument("--out", default="docs/table1/experiments/agreement")
    p.add_argument("--checkpoints", default="results/experiments/agreement")
    p.add_argument("--figure", metavar="JSON", help="draw JSON's figure next to it, run nothing")
    a = p.parse_args(argv)
    if a.figure:
        figure(a.figure, Path(a.figure).with_suffix(".png"))
        return 0
    if a.epochs < 0 or not 1 <= a.images <= 60000 or a.seed < 0:
        p.error("--epochs must be >= 0, --images in 1..60000, --seed >= 0")
    try:
        runs = [parse_run(s) for s in a.runs]
    except ValueError as err:
        p.error(str(err))
    train(a, runs)
    figure(Path(a.out) / "agreement.json", Path(a.out) / "agreement.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
