"""bench.py --quick runs end to end and writes a bench.json of the documented shape (no timing is
asserted: timings belong in the benchmark, not in tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_json_shape(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    b = json.loads(out.read_text())
    for key in ("machine", "torch", "threads", "device", "gemm_gflops", "settings", "plotcurves", "quick"):
        assert key in b
    assert b["quick"] is True and b["device"] == "cpu" and b["gemm_gflops"] > 0
    names = [r["setting"] for r in b["settings"]]
    assert names == ["P-1h", "P-conv"]
    for r in b["settings"]:
        for key in ("ep_ms", "bptt_ms", "test_s", "ep_epoch_s", "bptt_epoch_s", "ep_gflop_per_batch",
                    "bptt_gflop_per_batch", "ep_gflops", "bptt_gflops", "ep_frac_limit", "bptt_frac_limit"):
            assert isinstance(r[key], float) and r[key] > 0, key
    assert b["plotcurves"]["seconds"] > 0
    assert "P-1h" in proc.stdout and "GFLOP/s" in proc.stdout


def test_flop_formulas():
    """The FLOP counts follow the equations: P-1h step = 2 couplings of W_01 (10x512), the input
    drive once per batch; EP = (T + K) steps + drive + two-phase Hebbian outer products."""
    sys.path.insert(0, str(REPO))
    import bench
    from netClasses import build_net
    a = bench.make_args("P-1h")
    assert bench.step_macs(a) == 2 * 10 * 512
    assert bench.drive_macs(a) == 512 * 784
    net = build_net(a)
    assert bench.flops_ep(a, net) == 2 * 20 * (55 * 2 * 10 * 512 + 512 * 784 + 2 * (10 * 512 + 512 * 784))
    c = bench.make_args("P-conv")
    # conv_0 (32->64, 5x5 on 12x12 -> 8x8) forward + transposed feedback, fc 1024->10 both ways
    assert bench.step_macs(c) == 2 * 64 * 32 * 25 * 8 * 8 + 2 * 10 * 1024
    assert bench.drive_macs(c) == 32 * 1 * 25 * 24 * 24
