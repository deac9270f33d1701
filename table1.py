"""Table 1 of Ernoult et al. (NeurIPS 2019): the paper's numbers, the aggregation of a sweep folder
written by reproduce.py into DIR/table1.json, table1.md and table1.png, and figures and tables over
several sweeps.

    python table1.py table DIR                          # = python reproduce.py --table-only --results-dir DIR
    python table1.py summary --out docs/table1/summary.png docs/table1/*/
    python table1.py collect --into docs/table1 results/table1 results/table1-eb ...

A sweep folder: DIR/runs/*/seed-*/run.json (preset, seed, flags) beside main.py's result folders
<model>/<device>-<date>/Trial-<k>/{config.json, results.json}.  Only those files are read.
"""
import argparse
import json
import re
import shutil
import statistics
import sys
import textwrap
from pathlib import Path

import results as rs

# ------------------------------------------------------------------------------------------------
# The paper's numbers (the only copy in the code): MNIST test error in %, mean ± std over 5 trials,
# after `epochs` epochs (the preset's epoch count).
PAPER_CITATION = "Ernoult et al. (NeurIPS 2019), Table 1, 5 trials"
PAPER = {  # row -> (epochs, {method: (mean, std)})
    "EB-1h": (30, {"EP": (2.06, 0.17), "BPTT": (2.11, 0.09)}),
    "EB-2h": (50, {"EP": (2.01, 0.21), "BPTT": (2.02, 0.10)}),
    "P-1h": (30, {"EP": (2.00, 0.13), "BPTT": (2.00, 0.12)}),
    "P-2h": (50, {"EP": (1.95, 0.10), "BPTT": (2.09, 0.12)}),
    "P-3h": (100, {"EP": (2.01, 0.18), "BPTT": (2.30, 0.17)}),
    "P-conv": (40, {"EP": (1.02, 0.04), "BPTT": (0.88, 0.06)}),
}
PAPER_ALIASES = {"P-1h-T30K10": "P-1h"}  # presets that are variants of a paper row
ORDER = ["EB-1h", "EB-2h", "P-1h", "P-1h-T30K10", "P-2h", "P-3h", "P-conv"]
SPLIT_AT = 10.0  # % test error: seeds on both sides of it did not all learn alike
COLORS = {"EP": "tab:blue", "BPTT": "tab:orange"}


def read_json(path):
    """(object, None), or (None, why) for a file that is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text()), None
    except OSError as e:
        return None, f"{Path(path).name}: {e.strerror or e}"
    except ValueError as e:
        return None, f"{Path(path).name}: not JSON ({e})"


def mean_std(values):
    """Mean and sample std (ddof 1; None for one value)."""
    values = list(values)
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def trial_key(t):
    return t.parent.name, int(t.name.split("-")[1]) if t.name.split("-")[1].isdigit() else 0


def trials_of(folder):
    return sorted((p for p in Path(folder).glob("*/*/Trial-*") if p.is_dir()), key=trial_key)


# ------------------------------------------------------------------------------------------------
# Aggregation

def collect(results_dir):
    """{(preset, flags): {"seeds": {seed: (results, config args)}, "pending": [seed],
    "failed": {seed: why}}} from DIR/runs/*/seed-*/run.json and each run's last Trial."""
    groups = {}
    for rj in sorted(Path(results_dir).glob("runs/*/seed-*/run.json")):
        run, _ = read_json(rj)
        if not isinstance(run, dict) or "preset" not in run or "seed" not in run:
            continue
        g = groups.setdefault((run["preset"], tuple(run.get("flags", []))), {"seeds": {}, "pending": [], "failed": {}})
        files = [t / "results.json" for t in trials_of(rj.parent) if (t / "results.json").exists()]
        if not files:
            g["pending"].append(run["seed"])
            continue
        res, why = read_json(files[-1])
        if why is None and not (isinstance(res, dict) and isinstance(res.get("error_test_tab"), list)):
            why = "results.json: not a training run's results"
        if why is not None:
            g["failed"][run["seed"]] = f"{files[-1].parent}: {why}"
            continue
        cfg, _ = read_json(files[-1].parent / "config.json")
        args = cfg.get("args") if isinstance(cfg, dict) else None
        g["seeds"][run["seed"]] = (res, args if isinstance(args, dict) else {})
    return groups


def method_series(res):
    """[(method, key suffix)] of a results.json: the main method, then the --benchmark BPTT copy."""
    main = res.get("method", "EP")
    out = [(main, "")]
    if "error_test_bptt_tab" in res:
        out.append(("BPTT" if main != "BPTT" else "BPTT (benchmark copy)", "_bptt"))
    return out


def diverged_methods(res):
    """The method a "diverged" message names ("... method EP ..."), else all of them."""
    if "diverged" not in res:
        return set()
    methods = {m for m, _ in method_series(res)}
    m = re.search(r"method (\w+)", str(res["diverged"]))
    return ({m.group(1)} & methods if m else set()) or methods


def seed_entry(seed, res, args, method, sfx):
    """One seed's numbers for one method of a row."""
    test, train = res.get(f"error_test{sfx}_tab") or [], res.get(f"error_train{sfx}_tab") or []
    secs = res.get(f"seconds{sfx}_tab") or []
    return dict(seed=seed, epochs_done=len(test), epochs_target=args.get("epochs"),
                final_test_error=test[-1] if test else None, best_test_error=min(test) if test else None,
                final_train_error=train[-1] if train else None,
                seconds_per_epoch=statistics.mean(secs) if secs else None,
                diverged=method in diverged_methods(res), stopped="diverged" in res,
                nudging=None if args.get("nudging") is None else str(args["nudging"]),
                test_error=test, train_error=train)


def curve(per, key):
    longest = max((len(s[key]) for s in per), default=0)
    stats = [mean_std(s[key][e] for s in per if len(s[key]) > e) for e in range(longest)]
    return [m for m, _ in stats], [s for _, s in stats]


def make_row(preset, flags, method, sfx, seeds):
    """One table row: a (preset, flags, method) over the seeds that have an epoch of it or whose run
    diverged (a divergence in epoch 1 leaves no number, but belongs in the table)."""
    per = [e for s, (res, args) in sorted(seeds.items())
           if (e := seed_entry(s, res, args, method, sfx))["epochs_done"] or e["stopped"]]
    if not per:
        return None
    done = [e for e in per if e["epochs_done"]]
    nudging = sorted({e["nudging"] for e in per if e["nudging"] is not None})
    paper_key = PAPER_ALIASES.get(preset, preset)
    p_epochs, p_methods = PAPER.get(paper_key, (None, {}))
    p_mean, p_std = p_methods.get(method.split()[0], (None, None))
    target = max((e["epochs_target"] for e in per if e["epochs_target"] is not None), default=None)
    row = dict(preset=preset, method=method, flags=list(flags), seeds=[e["seed"] for e in per], n_seeds=len(per),
               epochs_done=[e["epochs_done"] for e in per], epochs_target=target)
    row["complete"] = target is not None and min(row["epochs_done"]) >= target
    row["diverged"] = [e["seed"] for e in per if e["diverged"]]
    row["stopped_by_divergence"] = [e["seed"] for e in per if e["stopped"] and not e["diverged"]
                                    and (target is None or e["epochs_done"] < target)]
    for key in ("final_test_error", "final_train_error", "best_test_error"):
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(e[key] for e in done if e[key] is not None)
    secs = [e["seconds_per_epoch"] for e in per if e["seconds_per_epoch"] is not None]
    row.update(paper_row=paper_key if p_epochs else None, paper_epochs=p_epochs,
               paper_test_error_mean=p_mean, paper_test_error_std=p_std,
               seconds_per_epoch_mean=statistics.mean(secs) if secs else None,
               nudging=(nudging[0] if len(nudging) == 1 else nudging or None))
    row["test_error_curve_mean"], row["test_error_curve_std"] = curve(done, "test_error")
    row["train_error_curve_mean"], row["train_error_curve_std"] = curve(done, "train_error")
    high = [e["seed"] for e in done if e["final_test_error"] >= SPLIT_AT]
    row["split"] = (dict(threshold=SPLIT_AT, at_or_above=high, below=[e["seed"] for e in done if e["seed"] not in high])
                    if 0 < len(high) < len(done) else None)
    row["per_seed"] = [{k: v for k, v in e.items() if k not in ("stopped", "nudging", "epochs_target")} for e in per]
    return row


def preset_order(preset):
    return (ORDER.index(preset), "") if preset in ORDER else (len(ORDER), preset)


def build(results_dir):
    """The table1.json content of a sweep folder."""
    groups = collect(results_dir)
    rows, pending, failed = [], [], []
    for preset, flags in sorted(groups, key=lambda k: (preset_order(k[0]), k[1])):
        g = groups[(preset, flags)]
        methods = []
        for res, _ in g["seeds"].values():
            methods += [m for m in method_series(res) if m not in methods]
        for method, sfx in sorted(methods, key=lambda m: (m[0] != "EP", m[0])):
            if row := make_row(preset, flags, method, sfx, g["seeds"]):
                rows.append(dict(row, failed_seeds=sorted(g["failed"])))
        if g["pending"]:
            pending.append(dict(preset=preset, flags=list(flags), seeds=sorted(g["pending"])))
        failed += [dict(preset=preset, flags=list(flags), seed=s, reason=why) for s, why in sorted(g["failed"].items())]
    return {"source": PAPER_CITATION, "std": "sample standard deviation over seeds (ddof 1); null for one seed",
            "errors": "percent, at each seed's last finished epoch",
            "best_test_error": "each seed's lowest test error over its epochs: chosen on the test set",
            "split_at": SPLIT_AT, "rows": rows, "pending": pending, "failed": failed}


# ------------------------------------------------------------------------------------------------
# table1.md

def fmt(mean, std=None, digits=2):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def show_flags(flags):
    return " ".join(flags) if flags else "(none)"


HEADER = ["preset", "flags", "method", "n seeds", "epochs", "final test error", "final train error",
          "best test (chosen on test)", "paper test", "s/epoch", "notes"]


def md_cells(r):
    done = sorted(set(r["epochs_done"]))
    epochs = f"{'–'.join(map(str, (done[0], done[-1]) if len(done) > 1 else done))}/{r['epochs_target']}"
    final = fmt(r["final_test_error_mean"], r["final_test_error_std"])
    split = r.get("split")
    if split:
        n = len(split["at_or_above"]) + len(split["below"])
        values = ", ".join(f"{s['final_test_error']:.2f}" for s in r["per_seed"] if s["final_test_error"] is not None)
        final += f" (split: {len(split['at_or_above'])} of {n} seeds ≥ {split['threshold']:g} %: {values})"
    notes = []
    short = [f"seed {s} at {e}" for s, e in zip(r["seeds"], r["epochs_done"]) if e < (r["epochs_target"] or 0)]
    if short:
        notes.append("unfinished: " + ", ".join(short))
    for key, what in (("diverged", "diverged"), ("stopped_by_divergence", "stopped by the other method's divergence"),
                      ("failed_seeds", "failed (results unreadable)")):
        if r.get(key):
            notes.append(f"{what}: seed " + ", ".join(map(str, r[key])))
    if r["nudging"]:
        notes.append(f"nudging {r['nudging']}")
    secs = f"{r['seconds_per_epoch_mean']:.1f}" if r["seconds_per_epoch_mean"] is not None else "–"
    return [r["preset"], f"`{' '.join(r['flags'])}`" if r["flags"] else "–", r["method"], str(r["n_seeds"]), epochs,
            final, fmt(r["final_train_error_mean"], r["final_train_error_std"]),
            fmt(r["best_test_error_mean"], r.get("best_test_error_std")),
            fmt(r["paper_test_error_mean"], r["paper_test_error_std"]), secs, "; ".join(notes)]


def md_table(rows, first=None):
    """Markdown table lines; `first`: (column name, a value per row) put before the others."""
    head = ([first[0]] if first else []) + HEADER
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(([first[1][i]] if first else []) + md_cells(r)) + " |")
    return lines


def markdown(table):
    lines = ["# Table 1 reproduction", "",
             "MNIST error in % at each seed's last finished epoch: mean ± sample std (ddof 1) over seeds. "
             f"Paper: {table['source']}; P-1h-T30K10 is compared with the paper's P-1h row. "
             "\"best test\" is each seed's lowest test error over its epochs, chosen on the test set (optimistic). "
             f"A row whose seeds fall on both sides of {table['split_at']:g} % is marked as split, "
             "with each seed's value.",
             "", *md_table(table["rows"])]
    for p in table["pending"]:
        lines.append(f"\nNo finished epoch yet: {p['preset']} (flags {show_flags(p['flags'])}), seeds {p['seeds']}.")
    for f in table["failed"]:
        lines.append(f"\nFailed seed (left out of the numbers): {f['preset']} (flags {show_flags(f['flags'])}), "
                     f"seed {f['seed']}: {f['reason']}.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Figures

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def log_axis(ax, ylabel, xlabel="epoch"):
    from matplotlib import ticker
    if any(y > 0 for line in ax.get_lines() for y in line.get_ydata()):  # a run may diverge before any number
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))  # labels 1, 2, 5, 10, 20, 50
        ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")


def plot_group(ax_test, ax_train, preset, flags, rows):
    """Error per epoch for each method of one (preset, flags): each seed a thin line, the mean over
    seeds on top; on the test panel the paper's mean ± std at its final epoch (at the last epoch
    shown for shorter runs)."""
    from matplotlib import ticker
    last = max([len(r["test_error_curve_mean"]) for r in rows] + [1])
    for i, r in enumerate(rows):
        c = COLORS.get(r["method"], "tab:green")
        for ax, key in ((ax_test, "test_error"), (ax_train, "train_error")):
            for s in r["per_seed"]:
                ax.plot(range(1, len(s[key]) + 1), s[key], "-", lw=0.7, alpha=0.45, color=c)
            mean = r[f"{key}_curve_mean"]  # empty when every seed diverged in its first epoch
            label = f"{r['method']}: mean of {r['n_seeds']} seed{'s' * (r['n_seeds'] > 1)}"
            label += f" ({len(r['diverged'])} diverged)" if r["diverged"] else ""
            ax.plot(range(1, len(mean) + 1), mean, "-o", ms=3, lw=1.8, color=c, label=label)
        if r["paper_test_error_mean"] is not None:
            px = min(r["paper_epochs"], last) + 0.04 * last * (i - (len(rows) - 1) / 2)  # side by side
            ax_test.errorbar([px], [r["paper_test_error_mean"]], yerr=[r["paper_test_error_std"] or 0], fmt="*",
                             ms=11, color=c, mec="black", capsize=3,
                             label=f"paper {r['method']} ({r['paper_epochs']} ep.)")
    title = "\n".join([preset] + textwrap.wrap(" ".join(flags), 60))
    for ax, what in ((ax_test, "test"), (ax_train, "train")):
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
        log_axis(ax, f"{what} error (%)")
        ax.set_title(f"{title}: {what} error (thin: seeds)", fontsize=8)
        ax.legend(fontsize=7)


def plot(table, path):
    """table1.png: a row of two panels (test, train error) per (preset, flags)."""
    plt = pyplot()
    groups = {}
    for r in table["rows"]:
        groups.setdefault((r["preset"], tuple(r["flags"])), []).append(r)
    fig, axes = plt.subplots(max(len(groups), 1), 2, figsize=(11, 4 * max(len(groups), 1)), squeeze=False)
    for (ax_test, ax_train), ((preset, flags), rows) in zip(axes, groups.items()):
        plot_group(ax_test, ax_train, preset, flags, rows)
    for ax in axes.flat[2 * len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    rs.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write(results_dir):
    """table1.json, .md and .png of a sweep folder, each written once, atomically; seeds whose
    results cannot be read are named on stderr.  Returns the markdown."""
    results_dir = Path(results_dir)
    table = build(results_dir)
    for f in table["failed"]:
        print(f"table1: {f['preset']} seed {f['seed']}: failed seed, left out of the numbers: {f['reason']}",
              file=sys.stderr)
    rs.write_json(results_dir / "table1.json", table)
    md = markdown(table)
    rs.atomic_write_text(results_dir / "table1.md", md)
    plot(table, results_dir / "table1.png")
    return md


def has_runs(results_dir):
    return any(Path(results_dir).glob("runs/*/seed-*/run.json"))


# ------------------------------------------------------------------------------------------------
# Over several sweeps: the summary figure and the combined table

CONTROL_NAME = re.compile(r"^(?P<preset>.+)-(?P<method>EP|BPTT)-run(?P<run>\d+)$")


def controls(folder):
    """The original code's runs: {(paper row, method): [record]} from folder/<preset>-<method>-run<k>.json."""
    out = {}
    for f in sorted(Path(folder).glob("*.json")):
        rec, _ = read_json(f)
        m = CONTROL_NAME.match(str((rec or {}).get("name", ""))) if isinstance(rec, dict) else None
        if m and rec.get("test_error"):
            out.setdefault((PAPER_ALIASES.get(m["preset"], m["preset"]), m["method"]), []).append(rec)
    return out


def control_target(rec):
    cmd = list(map(str, rec.get("command", [])))
    return int(cmd[cmd.index("--epochs") + 1]) if "--epochs" in cmd[:-1] else None


def summary(dirs, out, original=None):
    """One figure with every Table-1 row: the paper's mean ± std, ours (mean ± std over seeds, one
    marker per sweep row) and the original code's control (its last epoch; unseeded, maybe partial)."""
    plt = pyplot()
    ours = []  # (paper row, method, label, row)
    for d in dirs:
        table, _ = read_json(Path(d) / "table1.json")
        for r in (table or {}).get("rows", []):
            key = r.get("paper_row") or PAPER_ALIASES.get(r["preset"], r["preset"])
            if key in PAPER and r.get("final_test_error_mean") is not None:
                ours.append((key, r["method"].split()[0], f"ours: {r['preset']} {' '.join(r['flags'])}".strip(), r))
    ctrl = controls(original) if original else {}
    labels = list(dict.fromkeys(label for *_, label, _ in ours))
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(13, 5.5))
    ticks = []
    for i, (key, (epochs, methods)) in enumerate(PAPER.items()):
        for j, method in enumerate(("EP", "BPTT")):
            x0 = 2 * i + j
            ticks.append((x0, f"{key}\n{method}\n{epochs} ep."))
            mine = [(lab, r) for k, m, lab, r in ours if (k, m) == (key, method)]
            runs = ctrl.get((key, method), [])
            n = 1 + len(mine) + len(runs)
            xs = [x0 + 0.7 * (k / (n - 1) - 0.5) if n > 1 else x0 for k in range(n)]
            mean, std = methods[method]
            ax.errorbar([xs[0]], [mean], yerr=[std], fmt="*", ms=12, color="black", capsize=3,
                        label="paper (mean ± std over 5 trials)")
            for x, (lab, r) in zip(xs[1:], mine):
                c = cmap(labels.index(lab) % 10)
                ax.errorbar([x], [r["final_test_error_mean"]], yerr=[r["final_test_error_std"] or 0], fmt="o", ms=6,
                            capsize=3, color=c, label=lab)
                seeds = [s["final_test_error"] for s in r.get("per_seed", []) if s["final_test_error"] is not None]
                ax.plot([x + 0.06] * len(seeds), seeds, ".", ms=3, color=c, alpha=0.6)  # each seed
                ax.annotate(f"n={r['n_seeds']}", (x, r["final_test_error_mean"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            for x, rec in zip(xs[1 + len(mine):], runs):
                done, target = len(rec["test_error"]), control_target(rec) or epochs
                ax.plot([x], [rec["test_error"][-1]], "X", ms=9, mfc="white", mec="crimson", mew=1.5,
                        label="original code (unseeded): its last epoch")
                ax.annotate(f"{done}/{target} ep." + ("" if rec.get("complete") else ", partial"),
                            (x, rec["test_error"][-1]), fontsize=6, color="crimson", xytext=(4, -9),
                            textcoords="offset points")
    ax.set_xticks([t for t, _ in ticks], [s for _, s in ticks], fontsize=8)
    for i in range(1, len(PAPER)):
        ax.axvline(2 * i - 0.5, color="grey", lw=0.5)
    log_axis(ax, "final test error (%)", xlabel="")
    ax.set_title(f"Table 1: ours (mean ± sample std over seeds; dots: seeds, where the table has them) vs "
                 f"{PAPER_CITATION}", fontsize=9)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per label
    ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    rs.atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


RUN_RECORDS = ("run.json", "results.json", "config.json", "hyperparameters.txt")


def copy_run_records(src, dst):
    """The small files of every run (never checkpoints or figures) from sweep folder src into dst,
    in the same layout, so that `reproduce.py --table-only --results-dir dst` rebuilds its table."""
    for f in sorted(Path(src).glob("runs/**/*")):
        if f.is_file() and f.name in RUN_RECORDS:
            out = Path(dst) / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, out)


def collect_docs(sources, into):
    """For each sweep folder with runs: write its table and copy table1.json/.md/.png and the runs'
    small files (copy_run_records) into into/<name>/; a folder without runs contributes the into/<name>/table1.json already there, as it is.
    Returns the combined markdown table of every row."""
    rows, names = [], []
    for src in map(Path, sources):
        dst = Path(into) / src.name
        if has_runs(src):
            write(src)
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("table1.json", "table1.md", "table1.png", "sweep.json"):
                if (src / f).exists():
                    shutil.copy(src / f, dst / f)
            copy_run_records(src, dst)
        table, _ = read_json(dst / "table1.json")
        for r in (table or {}).get("rows", []):
            rows.append({"failed_seeds": [], "split": None, **r})
            names.append(src.name)
    return "\n".join(md_table(rows, ("sweep", names))) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="table1.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="write DIR/table1.json, .md, .png from a sweep folder's runs")
    t.add_argument("dir", metavar="DIR")
    s = sub.add_parser("summary", help="one figure of every Table-1 row over the sweeps' table1.json")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="folders with a table1.json")
    s.add_argument("--out", required=True, metavar="PNG")
    s.add_argument("--original", default=str(Path(__file__).resolve().parent / "docs/table1/original"), metavar="DIR",
                   help="the original code's control runs, <preset>-<method>-run<k>.json (default: %(default)s)")
    c = sub.add_parser("collect", help="tables of sweep folders copied into DOCS/<name>/; prints the combined table")
    c.add_argument("sources", nargs="+", metavar="SWEEP")
    c.add_argument("--into", required=True, metavar="DOCS")
    a = p.parse_args(argv)
    if a.cmd == "table":
        if not has_runs(a.dir):
            p.error(f"no runs of reproduce.py in {a.dir}")
        print(write(a.dir), end="")
    elif a.cmd == "summary":
        summary(a.dirs, a.out, a.original)
    else:
        print(collect_docs(a.sources, a.into), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
