#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU; run from anywhere in the repository:
#     bash scripts/cuda_check.sh            (OUT=DIR to choose where the logs go)
# 1. installs requirements.txt if this Python has no torch (pip; nothing is copied);
# 2. runs tests/test_cuda.py and tests/test_golden.py (the golden tests run on cpu and on cuda:0);
# 3. times a one-epoch P-1h run, EP and BPTT, on cuda:0 with 2000 training examples.
# Needs MNIST in data/MNIST/raw (the four torchvision .gz files are enough).  Writes env.txt,
# pytest.log, pytest.xml, p1h.log and the run's result folder under $OUT (default: a new temp dir).
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
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/pytest.xml" tests/test_cuda.py tests/test_golden.py \
    2>&1 | tee "$OUT/pytest.log" || status=1
echo "cuda_check: tests took $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest.log"

start=$(date +%s)
"$PY" main.py --preset P-1h --epochs 1 --seed 1 --device-label 0 --train-subset 2000 --quiet \
    --results-dir "$OUT/results" 2>&1 | tee "$OUT/p1h.log" || status=1
echo "cuda_check: one-epoch P-1h (EP + BPTT, 2000 examples, cuda:0) took $(( $(date +%s) - start )) s wall" \
    | tee -a "$OUT/p1h.log"

echo "cuda_check: $([ $status = 0 ] && echo passed || echo FAILED); logs in $OUT"
exit $status
