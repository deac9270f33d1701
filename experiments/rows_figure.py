"""Several Table-1 rows of one preset on one pair of axes: train and test error per epoch of every row
of the given sweeps (one colour a row, one line a seed), from the sweeps' table1.json, each row labelled
by its method and the flags that set it apart, and the paper's EP and BPTT test errors as horizontal
lines. For comparing training variants of one setting (nudging, β) side by side.

    python experiments/rows_figure.py --out docs/table1/experiments/p2h-nudging.png \\
        docs/table1/table1-p2h docs/table1/p2h-beta025 docs/table1/p2h-symmetric
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


def label(row):
    """'EP, symmetric, β 0.5' from a table1.json row: its method, for EP its nudging (the row's, which
    its runs recorded) and β (the preset's unless --beta sets it), then any other flag that sets the
    row apart (--no-benchmark and --training-method only say which method ran)."""
    flags, values, i = [], {}, 0
    while i < len(row["flags"]):
        f = row["flags"][i]
        if f in ("--training-method", "--beta", "--nudging"):
            values[f], i = row["flags"][i + 1], i + 2
            continue
        if f != "--no-benchmark":
            flags.append(f)
        i += 1
    parts = [row["method"]]
    if row["method"] == "EP":
        preset = preset_config(row["preset"])
        parts += [row["nudging"] or preset.nudging, f"β {values.get('--beta', preset.beta)}"]
    return ", ".join(parts + flags)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", help="sweep folders holding table1.json")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = [r for s in a.sweeps for r in json.loads((Path(s) / "table1.json").read_text())["rows"]]
    presets = sorted({r["preset"] for r in rows})
    if len(presets) != 1:
        p.error(f"the sweeps' rows must share one preset, got {', '.join(presets)}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for i, row in enumerate(rows):
        for j, seed in enumerate(row["per_seed"]):
            for ax, key in zip(axes, ("train_error", "test_error")):
                ax.plot(range(1, len(seed[key]) + 1), seed[key], color=f"C{i}", lw=1.2,
                        ls="-" if row["method"] == "EP" else "--",
                        label=f"{label(row)} ({row['n_seeds']} seed{'s' * (row['n_seeds'] > 1)})"
                        if j == 0 else None)
    paper = {(r["method"], r["paper_test_error_mean"]) for r in rows if r["paper_test_error_mean"]}
    for method, err in sorted(paper):
        axes[1].axhline(err, color="k", lw=0.8, ls="-" if method == "EP" else "--",
                        label=f"paper, {method}: {err}")
    for ax, what in zip(axes, ("train", "test")):
        log_error_axis(ax, xlabel="epoch", ylabel=f"{what} error (%)",
                       title=f"{presets[0]}: {what} error per epoch (dashed: BPTT)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    save(fig, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
