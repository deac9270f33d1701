"""One-sided EP's drift against the length of the nudged phase: train and test error per epoch of the
EP rows of the given sweeps (each K a colour, dashed when odd), one thin line per seed, from the
sweeps' table1.json, and the runs of experiments/reference.py (black: EP compared with s(T), the
paper's reference, solid, or with the free state continued for K steps, s(T+K), dotted).

    python experiments/parity_figure.py --out docs/table1/experiments/parity.png \\
        docs/table1/parity-K13 docs/table1/parity-K14 ... [--reference docs/table1/experiments/reference/P-1h-continued-K15.json]
    python experiments/parity_figure.py --out docs/table1/experiments/p2h-reference.png --reference \\
        docs/table1/experiments/reference/P-2h-free-K20.json docs/table1/experiments/reference/P-2h-continued-K20.json
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from figures import log_error_axis, save  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from config import preset_config  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="*", help="sweep folders holding table1.json")
    p.add_argument("--reference", nargs="*", default=[], help="experiments/reference.py JSON files")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    presets = set()
    for i, sweep in enumerate(a.sweeps):
        for row in json.loads((Path(sweep) / "table1.json").read_text())["rows"]:
            if row["method"] != "EP" or row.get("nudging") not in (None, "one-sided"):
                continue
            presets.add(row["preset"])
            K = next((row["flags"][j + 1] for j, f in enumerate(row["flags"]) if f == "--Kmax"),
                     preset_config(row["preset"]).Kmax)
            parity = "odd" if int(K) % 2 else "even"
            for j, seed in enumerate(row["per_seed"]):
                for ax, key in zip(axes, ("train_error", "test_error")):
                    ax.plot(range(1, len(seed[key]) + 1), seed[key], color=colours[i % len(colours)],
                            ls="-" if parity == "even" else "--", lw=1.2,
                            label=f"K {K} ({parity})" if j == 0 else None)
    for path in a.reference:
        for j, run in enumerate(json.loads(Path(path).read_text())["runs"]):
            presets.add(run.get("preset", "P-1h"))
            free = run["reference"] == "free"
            for ax, key in zip(axes, ("train_error", "test_error")):
                ax.plot(range(1, len(run[key]) + 1), run[key], color="k", lw=1.5 if free else 2,
                        ls="-" if free else ":",
                        label=f"K {run['Kmax']}, reference {'s(T)' if free else 's(T+K)'}" if j == 0 else None)
    for ax, what in zip(axes, ("train", "test")):
        log_error_axis(ax, xlabel="epoch", ylabel=f"{what} error (%)",
                       title=f"{', '.join(sorted(presets))} one-sided EP: {what} error (dashed: odd K)")
    axes[0].legend(fontsize=8)
    save(fig, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
