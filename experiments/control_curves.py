"""The original code's control runs on the same axes as ours: test error per epoch, one panel per
Table-1 row and method that has a control; ours as the mean ± 1 std band over seeds (and each seed
where the sweep's table1.json has them), each control run as a line of crosses.

    python experiments/control_curves.py --out docs/table1/original/curves.png \\
        docs/table1/table1 docs/table1/table1-eb
"""
import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from figures import log_error_axis, save  # noqa: E402
import numpy as np  # noqa: E402

ORIGINAL = Path(__file__).resolve().parent.parent / "docs" / "table1" / "original"


def controls():
    """{(preset, method): [(name, test errors)]} from ORIGINAL/<preset>-<method>-run<k>.json."""
    out = {}
    for f in sorted(ORIGINAL.glob("*.json")):
        m = re.fullmatch(r"(.+)-(EP|BPTT)-run\d+", f.stem)
        rec = json.loads(f.read_text())
        if m and rec.get("test_error"):
            out.setdefault((m[1], m[2]), []).append((f.stem, rec["test_error"]))
    return out


def ours(sweeps):
    """{(preset, method): table1.json row} of the default-flag rows of the sweeps."""
    rows = {}
    for d in sweeps:
        for r in json.loads((Path(d) / "table1.json").read_text())["rows"]:
            if not r["flags"]:
                rows[(r["preset"], r["method"])] = r
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    ctl, mine = controls(), ours(a.sweeps)
    keys = sorted(ctl)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        r = mine.get(key)
        if r is not None:
            mean, std = np.array(r["test_error_curve_mean"]), np.array(r["test_error_curve_std"])
            ep = np.arange(1, len(mean) + 1)
            ax.plot(ep, mean, color="tab:blue", label=f"ours, mean of {r['n_seeds']} seeds")
            ax.fill_between(ep, mean - std, mean + std, color="tab:blue", alpha=0.2)
            for s in r.get("per_seed", []):
                ax.plot(range(1, len(s["test_error"]) + 1), s["test_error"], color="tab:blue", lw=0.6, alpha=0.6)
        for i, (name, test) in enumerate(ctl[key]):
            ax.plot(range(1, len(test) + 1), test, "x-", color=f"C{i + 1}", ms=5, label=f"original: {name}")
        log_error_axis(ax, title=f"{key[0]} {key[1]}: test error per epoch", xlabel="epoch",
                       ylabel="test error (%)")
        ax.legend(fontsize=8)
    save(fig, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
