"""Copy each sweep's table1.json/.md/.png from results/ into docs/table1/<sweep>/ and print the
README's combined Table 1 (mean ± sample std over seeds) from them.

    .venv/bin/python docs/table1/collect.py        # after the sweeps listed in SWEEPS
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ["table1", "table1-eb", "table1-symmetric", "drift-K10", "drift-lr-half", "table1-p2h"]


def pm(m, s):
    return "–" if m is None else f"{m:.2f}" + ("" if s is None else f" ± {s:.2f}")


def main():
    rows = []
    for sweep in SWEEPS:
        src = ROOT / "results" / sweep
        if not (src / "sweep.json").is_file():
            continue
        subprocess.run([sys.executable, str(ROOT / "reproduce.py"), "--table-only", "--results-dir", str(src)],
                       check=True, stdout=subprocess.DEVNULL)
        dst = Path(__file__).resolve().parent / sweep
        dst.mkdir(exist_ok=True)
        for f in ("table1.json", "table1.md", "table1.png"):
            shutil.copy(src / f, dst / f)
        for r in json.loads((src / "table1.json").read_text())["rows"]:
            rows.append((sweep, r))
    print("| preset | flags | method | seeds | epochs | final test error | final train error | best test | "
          "paper test | s/epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sweep, r in rows:
        ep = sorted(set(r["epochs_done"]))
        epochs = f"{ep[0]}/{r['epochs_target']}" if len(ep) == 1 else f"{ep[0]}–{ep[-1]}/{r['epochs_target']}"
        print(f"| {r['preset']} | {' '.join(r['flags']) or '–'} | {r['method']} | {r['n_seeds']} | {epochs} | "
              f"{pm(r['final_test_error_mean'], r['final_test_error_std'])} | "
              f"{pm(r['final_train_error_mean'], r['final_train_error_std'])} | "
              f"{pm(r['best_test_error_mean'], r.get('best_test_error_std'))} | "
              f"{pm(r['paper_test_error_mean'], r['paper_test_error_std'])} | {r['seconds_per_epoch_mean']:.0f} |")


if __name__ == "__main__":
    main()
