"""Does the free phase of a trained prototypical net end on a fixed point or on a 2-cycle, and what does
that do to one-sided EP?

The prototypical dynamics update all layers at once, s_n <- rho(W s_{n+1} + W^T s_{n-1} + b): a layered
(bipartite) net then runs two interleaved chains, (s_0 at even steps, s_1 at odd steps) and the other
way round.  When the weights allow several fixed points the two chains can settle on different ones,
and the joint state alternates between two states with period 2.  One-sided EP compares s^beta(T+K)
with s(T): for an odd K the two states lie on different chains, and the update
(1/beta)[dPhi(s^beta) - dPhi(s^0)] then carries the chains' difference divided by beta -- a term that
grows as beta shrinks, vanishes for an even K, and cancels in symmetric nudging (both phases end on
the same chain) and on average in random-sign nudging.

For each result folder (a train run with checkpoint.pt) this prints, on N training images in batches
of 20 at the run's T and K:
  - per layer, the free phase's last step ||s(T) - s(T-1)|| and two steps ||s(T) - s(T-2)||, and the
    fraction of images whose state is on a 2-cycle (one step moves it, two steps do not);
  - the "parity term": K free steps more, P = -(1/(beta B)) [dPhi(s(T+K)) - dPhi(s(T))] (no nudge at
    all), its norm against the EP update's and the EP update's cosine with the BPTT gradient, before
    and after removing P.

    python experiments/cycles.py FOLDER [FOLDER ...] [--images 500] [--json OUT]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import metrics  # noqa: E402
import mnist  # noqa: E402
import results as rs  # noqa: E402
from config import DEFAULTS, FIELDS, Config  # noqa: E402
from netClasses import build_net  # noqa: E402

TOL = 1e-3  # a state moved by less than this (max abs over units) counts as not moving


def load(folder):
    saved = rs.read_run_config(folder)
    cfg = Config(**{k: saved.get(k, getattr(DEFAULTS, k)) for k in FIELDS})
    net = build_net(cfg, fast=False)
    ck = rs.load_checkpoint(Path(folder) / "checkpoint.pt")
    net.load_state_dict(ck["net"])
    return cfg, net, ck["epoch"]


def diagnose(folder, n_images=500, data_dir="data"):
    cfg, net, epoch = load(folder)
    X, Y = mnist.load_mnist(data_dir, True, n_images, True, torch.device("cpu"), log=lambda *a, **k: None)
    T, K, beta = net.T, net.Kmax, net.beta
    step1, step2, on_cycle = [[] for _ in range(net.ns)], [[] for _ in range(net.ns)], [[] for _ in range(net.ns)]
    cos_raw, cos_fixed, ratio_p, ratio_ep = [], [], [], []
    with torch.no_grad():
        for i in range(0, X.shape[0], 20):
            x, y = X[i:i + 20], Y[i:i + 20]
            ctx = net.context(x)
            s_tm2 = net.free_phase(x, T=T - 2, ctx=ctx)
            s_tm1 = net.run_steps(s_tm2, ctx, 1)
            s_t = net.run_steps(s_tm1, ctx, 1)
            for n in range(net.ns):
                d1 = (s_t[n] - s_tm1[n]).abs().amax(1)
                d2 = (s_t[n] - s_tm2[n]).abs().amax(1)
                step1[n].append(d1.numpy())
                step2[n].append(d2.numpy())
                on_cycle[n].append(((d1 > TOL) & (d2 <= TOL)).numpy())
    for i in range(0, X.shape[0], 20):
        x, y = X[i:i + 20], Y[i:i + 20]
        _, _, g = net.bptt_grads(x, y)
        with torch.no_grad():
            ctx = net.context(x)
            s_t = net.free_phase(x, ctx=ctx)
            s_free = net.run_steps(s_t, ctx, K)  # K more free steps: where a beta = 0 "nudge" ends
            s_beta = net.nudged_phase(x, s_t, y, ctx=ctx)
            B = x.shape[0]
            H0, Hf, Hb = net.hebbian(x, s_t), net.hebbian(x, s_free), net.hebbian(x, s_beta)
            ep = torch.cat([(-(b - a) / (beta * B)).flatten() for a, b in zip(H0, Hb)])
            par = torch.cat([(-(f - a) / (beta * B)).flatten() for a, f in zip(H0, Hf)])  # no nudge at all
            gr = torch.cat([t.detach().flatten() for t in g])
        cos_raw.append(metrics.cosine(ep.numpy(), gr.numpy()))
        cos_fixed.append(metrics.cosine((ep - par).numpy(), gr.numpy()))
        ratio_p.append(float(par.norm() / ep.norm()))
        ratio_ep.append(float(ep.norm() / gr.norm()))
    return dict(
        folder=str(folder), epoch=epoch, T=T, K=K, beta=beta, nudging=cfg.nudging, images=int(X.shape[0]),
        last_step=[float(np.median(np.concatenate(v))) for v in step1],
        two_steps=[float(np.median(np.concatenate(v))) for v in step2],
        on_2cycle=[float(np.concatenate(v).mean()) for v in on_cycle],
        parity_over_ep=float(np.mean(ratio_p)), ep_over_bptt=float(np.mean(ratio_ep)),
        cos_ep_bptt=float(np.mean(cos_raw)), cos_ep_minus_parity_bptt=float(np.mean(cos_fixed)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [diagnose(f, a.images, a.data_dir) for f in a.folders]
    for r in rows:
        print(f"{r['folder']}\n  epoch {r['epoch']}  T {r['T']} K {r['K']} beta {r['beta']} {r['nudging']}: "
              f"on a 2-cycle {', '.join(f'{100 * v:.1f} %' for v in r['on_2cycle'])} (per layer); "
              f"median |s(T)-s(T-1)| {', '.join(f'{v:.2g}' for v in r['last_step'])}, "
              f"|s(T)-s(T-2)| {', '.join(f'{v:.2g}' for v in r['two_steps'])}\n"
              f"  |parity term| / |EP update| {r['parity_over_ep']:.3f}; |EP| / |BPTT| {r['ep_over_bptt']:.2f}; "
              f"cos(EP, BPTT) {r['cos_ep_bptt']:.3f} -> {r['cos_ep_minus_parity_bptt']:.3f} without the parity term")
    if a.json:
        rs.write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
