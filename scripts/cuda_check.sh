#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU; run from anywhere in the repository:
#     bash scripts/cuda_check.sh            (OUT=DIR to choose where the logs go)
# 1. installs requirements.txt if this Python has no torch (pip; nothing is copied);
# 2. runs tests/test_cuda.py and tests/test_golden.py (the golden tests run on cpu and on cuda:0);
# 3. times a one-epoch P-1h run, EP and BPTT, on cuda:0 with 2000 training examples;
# 4. populations: bench.py --population (ms per batch per member, CUDA graphs) for P-1h and EB-1h at
#    M = 1, 5, 32 and P-conv at M = 1, 5, and the projected wall time of every Table-1 row as a
#    5-seed population (population.log_projection, what `reproduce.py --stack` prints first).
# Needs MNIST in data/MNIST/raw (the four torchvision .gz files are enough).  Writes env.txt,
# pytest.log, pytest.xml, p1h.log, the run's result folder, pop-fc.json, pop-conv.json, population.log
# and projection.log under $OUT (default: a new temp dir).  SKIP_TESTS=1 skips step 2.
# Exit status: 0 only if CUDA is there, every test passed and the timed run finished.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
OUT=${OUT:-$(mktemp -d -t cuda-check.XXXXXX)}
mkdir -p "$OUT" || exit 1
export MPLBACKEND=Agg
echo "cuda_check: output in $OUT"

if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q -r requirements.txt || { echo "cuda_check: pip install failed" >&2; exit 1; }
fi
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0))
PYEOF
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "cuda_check: torch sees no CUDA device; nothing to check" >&2
    exit 1
fi

status=0
if [ -z "${SKIP_TESTS:-}" ]; then
    start=$(date +%s)
    "$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/pytest.xml" tests/test_cuda.py tests/test_golden.py \
        2>&1 | tee "$OUT/pytest.log" || status=1
    echo "cuda_check: tests took $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest.log"
fi

start=$(date +%s)
"$PY" main.py --preset P-1h --epochs 1 --seed 1 --device-label 0 --train-subset 2000 --quiet \
    --results-dir "$OUT/results" 2>&1 | tee "$OUT/p1h.log" || status=1
echo "cuda_check: one-epoch P-1h (EP + BPTT, 2000 examples, cuda:0) took $(( $(date +%s) - start )) s wall" \
    | tee -a "$OUT/p1h.log"

"$PY" bench.py --population 1 5 32 --settings P-1h EB-1h --device-label 0 --out "$OUT/pop-fc.json" \
    2>&1 | tee "$OUT/population.log" || status=1
"$PY" bench.py --population 1 5 --settings P-conv --device-label 0 --repeats 3 --out "$OUT/pop-conv.json" \
    2>&1 | tee -a "$OUT/population.log" || status=1
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/projection.log" || status=1
import time, torch, config, population
total = 0.0
for name in config.TABLE1:  # every Table-1 row as a 5-seed population on cuda:0, timed, not trained
    cfgs = [config.preset_config(name, seed=s, device_label=0, quiet=True) for s in (1, 2, 3, 4, 5)]
    pop = population.Population(cfgs)
    data = population.load_data(pop.cfgs[0], lambda *a, **k: None)
    t0 = time.perf_counter()
    total += population.log_projection(pop, *data, log=lambda *a, **k: print(name, *a, flush=True))
    print(name, f"(measuring took {time.perf_counter() - t0:.0f} s)", flush=True)
print(f"Table 1, six rows x 5 seeds, one after another on one GPU: {total / 3600:.1f} h projected")
PYEOF

echo "cuda_check: $([ $status = 0 ] && echo passed || echo FAILED); logs in $OUT"
exit $status
