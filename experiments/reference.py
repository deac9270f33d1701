"""Which state should one-sided EP compare the nudged state with?  A test of the parity explanation of
the P-1h drift (docs/table1/README.md).

One-sided EP updates with (1/beta)[dPhi(s^beta(T+K)) - dPhi(s(T))].  Split that difference into what
K more steps do without any nudge, dPhi(s(T+K)) - dPhi(s(T)) (zero on a fixed point, the difference of
two states on a 2-cycle of the prototypical dynamics when K is odd), and what the nudge adds,
dPhi(s^beta(T+K)) - dPhi(s(T+K)).  The first part does not depend on beta, so divided by beta it grows
as beta shrinks; symmetric nudging cancels it exactly and random-sign nudging on average.  If it is
what makes one-sided EP drift at T 40 / K 15, then comparing with the free state continued for K
steps, s(T+K), must remove the drift.

This trains a preset (P-1h unless told), EP only, one-sided, with either reference: "free" (s(T), the
paper's: this loop then equals `main.py --preset P-1h --no-benchmark` batch for batch) or "continued"
(s(T+K)), and writes the train and test error per epoch to OUT/PRESET-REFERENCE-K<K>.json.  After
every epoch each seed's weights are checkpointed under --checkpoints, so the same command run again
continues where it was cut (the data order depends only on seed and epoch).

    python experiments/reference.py --reference continued --seeds 1 2 --epochs 15 --Kmax 15 \\
        --out docs/table1/experiments/reference
    python experiments/reference.py --preset P-2h --reference continued --seeds 1 --epochs 20
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mnist  # noqa: E402
import netFunctions as nf  # noqa: E402
import results as rs  # noqa: E402
from config import preset_config  # noqa: E402
from netClasses import build_net  # noqa: E402


@torch.no_grad()
def epoch(net, X, Y, seed, e, reference):
    """One epoch of one-sided EP in the data order of a single run; the train error in %."""
    perm, B, wrong = nf.epoch_order(X.shape[0], seed, e), 20, 0
    for i in range(0, X.shape[0], B):
        idx = perm[i:i + B]
        x, y = X[idx], Y[idx]
        ctx = net.context(x)
        seq = net.free_phase(x, ctx=ctx)
        wrong += int((seq[0].argmax(1) != y.argmax(1)).sum())
        ref = net.clone_state(seq) if reference == "free" else net.run_steps(seq, ctx, net.Kmax)
        s = net.nudged_phase(x, seq, y, ctx=ctx)
        net.ep_update(net.beta, x, s, ref)
    return 100.0 * wrong / X.shape[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", choices=("free", "continued"), required=True)
    p.add_argument("--preset", choices=("P-1h", "P-2h", "P-3h", "EB-1h", "EB-2h", "P-1h-T30K10"), default="P-1h")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--Kmax", type=int, default=None, help="the nudged phase's length (default: the preset's)")
    p.add_argument("--out", default="docs/table1/experiments/reference")
    p.add_argument("--checkpoints", default="results/experiments/reference")
    a = p.parse_args(argv)
    if a.epochs < 1 or (a.Kmax is not None and a.Kmax < 1) or min(a.seeds) < 0:
        p.error("--epochs and --Kmax must be >= 1, seeds >= 0")
    torch.set_num_threads(1)
    quiet = dict(log=lambda *a, **k: None)
    Xtr, Ytr = mnist.load_mnist("data", True, None, True, torch.device("cpu"), **quiet)
    Xte, Yte = mnist.load_mnist("data", False, None, True, torch.device("cpu"), **quiet)
    out, ckdir = Path(a.out), Path(a.checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    ckdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in a.seeds:
        cfg = preset_config(a.preset, seed=seed, benchmark=False,
                            **({} if a.Kmax is None else dict(Kmax=a.Kmax)))
        name = f"{a.preset}-{a.reference}-K{cfg.Kmax}"
        nf.set_seed(seed)
        torch.manual_seed(seed)  # the initial weights of a single run with this seed
        net = build_net(cfg)
        row = dict(seed=seed, preset=a.preset, reference=a.reference, Kmax=cfg.Kmax,
                   train_error=[], test_error=[], seconds=[])
        ck = ckdir / f"{name}-seed{seed}.pt"
        if ck.is_file():  # resume: the weights and the curves after the last finished epoch
            saved = rs.load_checkpoint(ck)
            net.load_state_dict(saved["net"])
            row = saved["results"]
        rows.append(row)
        for e in range(len(row["train_error"]) + 1, a.epochs + 1):
            t0 = time.perf_counter()
            row["train_error"].append(epoch(net, Xtr, Ytr, seed, e, a.reference))
            row["test_error"].append(nf.evaluate(net, Xte, Yte))
            row["seconds"].append(round(time.perf_counter() - t0, 1))
            print(f"{a.preset} seed {seed} K {cfg.Kmax} reference {a.reference} epoch {e}: train {row['train_error'][-1]:.2f} % "
                  f"test {row['test_error'][-1]:.2f} %", flush=True)
            rs.save_checkpoint(ck, e, net, None, row)
            rs.write_json(out / f"{name}.json", dict(
                command=" ".join(["python", "experiments/reference.py", *sys.argv[1:]]), runs=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
