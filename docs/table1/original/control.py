"""Run the original code (ernoult/updatesEPgradientsBPTT) as a control and record its curves as JSON.

The original is never copied into this project.  Unpack it into a scratch folder outside the project,
apply its one torch-2 fix and give it MNIST:

    git --git-dir=DIR archive HEAD | tar -x -C SCRATCH
    sed -i 's/net\\.zero_grad()/net.zero_grad(set_to_none=False)/' SCRATCH/netFunctions.py
    mkdir -p SCRATCH/data/MNIST/raw && cp ../shared/data/MNIST/raw/*.gz SCRATCH/data/MNIST/raw/

then, from the project root (one thread per run, unseeded, as the original is):

    python docs/table1/original/control.py SCRATCH NAME -- --action train --discrete ...

Each epoch's train and test error are read from the original's printed counts ("(errors/total)"),
timed as they arrive, and written atomically to docs/table1/original/NAME.json after every epoch, so a
run cut short keeps the epochs it finished.
"""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = re.compile(r"Training Error Rate: [\d.]+% \((\d+)/(\d+)\)")
TEST = re.compile(r"Test Error Rate: [\d.]+% \((\d+)/(\d+)\)")


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv):
    if len(argv) < 3 or argv[2] != "--":
        sys.exit("usage: control.py SCRATCH NAME -- ORIGINAL_FLAGS...")
    scratch, name, flags = argv[0], argv[1], argv[3:]
    commit = subprocess.run(["git", "-C", scratch, "rev-parse", "HEAD"], capture_output=True, text=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True, env=env).stdout.strip()
    rec = dict(name=name, command=["python", "main.py"] + flags,
               source="github:ernoult/updatesEPgradientsBPTT",
               source_commit=os.environ.get("ORIGINAL_COMMIT", commit.stdout.strip() or "unknown"),
               patch="netFunctions.py: net.zero_grad() -> net.zero_grad(set_to_none=False)",
               torch=torch_version, threads=1, seed=None, train_error=[], test_error=[],
               seconds_per_epoch=[], complete=False)
    out = os.path.join(HERE, name + ".json")
    proc = subprocess.Popen([sys.executable, "main.py"] + flags, cwd=scratch, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    for line in proc.stdout:
        if m := TRAIN.search(line):
            rec["train_error"].append(100 * int(m[1]) / int(m[2]))
        elif m := TEST.search(line):
            rec["test_error"].append(100 * int(m[1]) / int(m[2]))
            rec["seconds_per_epoch"].append(round(time.time() - t0, 1))
            t0 = time.time()
            write_json(out, rec)
            print(name, len(rec["test_error"]), rec["train_error"][-1], rec["test_error"][-1], flush=True)
    rec["complete"] = proc.wait() == 0
    write_json(out, rec)
    return 0 if rec["complete"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
