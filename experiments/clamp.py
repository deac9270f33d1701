"""Does the clamp cause EB-1h BPTT's plateau?  BPTT alone on the EB-1h preset, with the clamp (the
paper's setting) and with --no-clamp, the same seeds, epoch by epoch; after every epoch, on the test
set: the test error, the recall of each class, and for each output unit the fraction of test images on
which it sits clamped at 0 or at 1 after the free phase.

The reading under test: an output held at 0 by the clamp has zero BPTT gradient (the clamp's
derivative is 0 outside [0, 1]), so a class whose output unit is clamped at 0 on its own images cannot
learn; EP's nudge, which acts on the state before the clamp, can lift it.  If the clamp is the cause,
the plateau runs show classes with recall 0 whose unit sits at 0 on most images, and the --no-clamp
runs do not plateau.

Each run is an ordinary result folder made through the experiment API, trained one epoch at a time
(resumed from its checkpoint), so the numbers equal a plain `main.py --preset EB-1h --no-benchmark
--training-method BPTT --seed S` run.

    python experiments/clamp.py --seeds 1 2 3 --epochs 10 --out docs/table1/experiments/clamp
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import experiment  # noqa: E402
import mnist  # noqa: E402
import results as rs  # noqa: E402
from config import preset_config  # noqa: E402
from netClasses import build_net  # noqa: E402


@torch.no_grad()
def probe(cfg, folder, X, Y):
    """Per-class recall (%) and per-output-unit clamped fractions of the checkpoint in folder."""
    net = build_net(cfg)
    net.load_state_dict(rs.load_checkpoint(Path(folder) / "checkpoint.pt")["net"])
    s0 = torch.cat([net.free_phase(X[i:i + 1000])[0] for i in range(0, X.shape[0], 1000)])  # (N, 10)
    pred, label = s0.argmax(1), Y.argmax(1)
    recall = [100.0 * float((pred[label == c] == c).float().mean()) for c in range(10)]
    return dict(test_error=100.0 * float((pred != label).float().mean()), recall=recall,
                at_zero=(s0 == 0).float().mean(0).tolist(), at_one=(s0 == 1).float().mean(0).tolist(),
                own_unit_at_zero=[float((s0[label == c, c] == 0).float().mean()) for c in range(10)])


def run_one(seed, clamp, epochs, root, X, Y, log, save):
    cfg = preset_config("EB-1h", seed=seed, benchmark=False, training_method="BPTT", quiet=True, threads=1,
                        results_dir=str(root / ("clamp" if clamp else "no-clamp") / f"seed-{seed}"),
                        **({} if clamp else {"no_clamp": True}))
    rows, folder = [], None
    run = dict(seed=seed, clamp=clamp, folder=None, epochs=rows)
    for e in range(1, epochs + 1):
        out = experiment.run(cfg.replace(epochs=e, resume=folder and str(folder)), log=lambda *a, **k: None)
        if out.code:
            log(f"seed {seed} clamp {clamp}: {out.message}")
            break
        folder = out.folder
        row = probe(cfg, folder, X, Y)
        rows.append(dict(epoch=e, train_error=out.results["error_train_tab"][-1], **row))
        run["folder"] = str(folder)
        save(run)
        dead = [c for c in range(10) if row["recall"][c] < 1]
        log(f"seed {seed} {'clamp   ' if clamp else 'no-clamp'} epoch {e:2d}: test {row['test_error']:5.2f} %, "
            f"classes with recall < 1 %: {dead}, own unit at 0 on them: "
            f"{[round(row['own_unit_at_zero'][c], 2) for c in dead]}")
    return run


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        ep = [e["epoch"] for e in r["epochs"]]
        c = "tab:red" if r["clamp"] else "tab:blue"
        axes[0].plot(ep, [e["test_error"] for e in r["epochs"]], color=c, marker="o", ms=3,
                     label=f"{'clamp' if r['clamp'] else 'no clamp'}, seed {r['seed']}")
        axes[1].plot(ep, [sum(v < 1 for v in e["recall"]) for e in r["epochs"]], color=c, marker="o", ms=3)
    axes[0].set(xlabel="epoch", ylabel="test error (%)", yscale="log", title="EB-1h, BPTT only")
    axes[1].set(xlabel="epoch", ylabel="classes with recall < 1 %", title="dead classes")
    axes[0].legend(fontsize=8)
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator
    for a in axes:
        a.grid(alpha=0.3, which="both")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="docs/table1/experiments/clamp")
    p.add_argument("--runs", default="results/experiments/clamp", help="where the result folders go")
    p.add_argument("--replot", action="store_true", help="only redraw OUT/clamp.png from OUT/clamp.json")
    a = p.parse_args(argv)
    if a.replot:
        import json
        plot(json.loads((Path(a.out) / "clamp.json").read_text())["runs"], Path(a.out) / "clamp.png")
        return 0
    torch.set_num_threads(1)
    X, Y = mnist.load_mnist("data", False, None, True, torch.device("cpu"), log=lambda *a, **k: None)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []

    def save(run):  # after every epoch: a cut run keeps what it finished
        if run not in runs:
            runs.append(run)
        rs.write_json(out / "clamp.json", dict(command=" ".join(["python", "experiments/clamp.py", *sys.argv[1:]]),
                                               runs=runs))
        plot(runs, out / "clamp.png")

    for seed in a.seeds:
        for clamp in (True, False):
            run_one(seed, clamp, a.epochs, Path(a.runs), X, Y, lambda m: print(m, flush=True), save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
