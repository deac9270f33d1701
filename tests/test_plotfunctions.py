"""Tests of plotFunctions.py: metrics on hand-made arrays, and end-to-end
rendering of synthetic result folders in a subprocess (which must not import torch)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import metrics as mt  # noqa: E402
import plotFunctions as pf  # noqa: E402

SCRIPT = os.path.join(ROOT, "plotFunctions.py")


# ---------------------------------------------------------------- metrics
def test_compute_nTdT():
    NT = [np.array([[1.0, 2.0], [3.0, 2.0], [6.0, 0.0]])]
    DT = [2 * NT[0]]
    nT, dT = mt.compute_nTdT(NT, DT)
    np.testing.assert_allclose(nT[0], [[0, 0], [2, 0], [3, -2]])
    np.testing.assert_allclose(dT[0], [[0, 0], [4, 0], [6, -4]])
    nT, dT = mt.compute_nTdT(NT, DT, zero_first=False)
    np.testing.assert_allclose(nT[0], [[1, 2], [2, 0], [3, -2]])
    np.testing.assert_allclose(nT[0].sum(0), NT[0][-1])  # increments add up
    np.testing.assert_allclose(dT[0][0], [2, 4])


def test_rmse_layer():
    a = np.array([[1.0, 0.0, 3.0], [0.0, 0.0, 4.0]])
    b = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 4.0]])
    # comp0: sqrt(1 / max(1, 2)); comp1: both zero -> 0; comp2: sqrt(9 / max(25, 16))
    expected = (np.sqrt(0.5) + 0.0 + 0.6) / 3
    assert mt.rmse_layer(a, b) == pytest.approx(expected)
    assert mt.rmse_layer(a, a) == 0.0
    assert mt.rmse_layer(np.zeros((3, 2)), np.zeros((3, 2))) == 0.0
    assert mt.rmse_layer(np.zeros((3, 1)), np.ones((3, 1))) == pytest.approx(1.0)  # one zero
    assert mt.rmse_layer(np.ones((2, 2, 2)), -np.ones((2, 2, 2))) == pytest.approx(2.0)
    assert isinstance(mt.rmse_layer(a, b), float)


def test_cosine():
    assert mt.cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    assert mt.cosine([1, 2], [2, 4]) == pytest.approx(1.0)
    assert mt.cosine([[1, 2]], [[-1, -2]]) == pytest.approx(-1.0)
    assert mt.cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert mt.cosine(np.zeros(3), np.ones(3)) == 0.0
    assert mt.cosine(np.ones(3), np.zeros(3)) == 0.0


def test_cosine_total_and_steps():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [1.0, 0.0]])
    tot, steps = mt.cosine_total_and_steps(a, b)
    assert tot == pytest.approx(1.0) and steps == pytest.approx(0.0)


def test_sign_agreement():
    a = np.array([1.0, -2.0, 0.0, 3.0, 0.0])
    b = np.array([2.0, -1.0, 0.0, -3.0, 5.0])
    same, zero = mt.sign_agreement(a, b)
    assert same == pytest.approx(40.0) and zero == pytest.approx(20.0)
    assert mt.sign_agreement(np.zeros(4), np.zeros(4)) == (0.0, 100.0)


def _processes(rng, K, neuron_shapes, weight_shapes, scale=1e-3):
    nS = [scale * rng.randn(K, *s) for s in neuron_shapes]
    dS = [x + 0.2 * scale * rng.randn(*x.shape) for x in nS]
    NT = [np.cumsum(scale * rng.randn(K, *s), 0) for s in weight_shapes]
    DT = [x + 0.2 * scale * rng.randn(*x.shape) for x in NT]
    return nS, dS, NT, DT


def test_gdu_metrics_identical():
    rng = np.random.RandomState(1)
    nS, _, NT, _ = _processes(rng, 4, [(3,), (2, 3, 3)], [(3, 5), (2, 1, 3, 3)])
    m = mt.gdu_metrics(nS, nS, NT, NT, ["s^0", "s^1"], ["W_{01}", "W_{1x}"])
    json.dumps(m)  # serialisable
    for group in ("neurons", "synapses"):
        for d in m[group].values():
            assert d["rmse"] == 0.0
            assert d["cos_total"] == pytest.approx(1.0)
            assert d["cos_steps"] == pytest.approx(1.0)
            assert d["sign_agree"] == pytest.approx(100.0)
            assert all(type(v) is float for v in d.values())


def test_compute_Hist_uses_cumulated_synapses():
    NT = [np.array([[1.0], [2.0]])]
    DT = [np.array([[1.0], [1.0]])]  # same first step, EP adds nothing at k=1
    rn, rs = mt.compute_Hist([np.ones((2, 1))], [np.ones((2, 1))], NT, DT)
    assert rn == [0.0]
    assert rs[0] == pytest.approx(np.sqrt(1 / 5))


# ---------------------------------------------------------- end-to-end
def _run(folder, *args, env=None):
    code = ("import sys, runpy; sys.argv = ['plotFunctions.py'] + sys.argv[1:]; "
            f"rc = 0\ntry:\n    runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, str(folder), *args], capture_output=True,
                          text=True, cwd=str(folder), timeout=300, env=env)


def _check_pngs(folder, names):
    import matplotlib.image as mpimg
    for n in names:
        p = os.path.join(folder, n)
        assert os.path.isfile(p), p
        assert mpimg.imread(p).ndim == 3


def _write(folder, res, arrays=None):
    """A result folder as the runs leave it: results.json (curves.npz) and the metrics.py copy that
    plotFunctions.py imports (results.createPath copies both scripts into every folder)."""
    import shutil
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "metrics.py"), folder / "metrics.py")
    (folder / "results.json").write_text(json.dumps(res))
    if arrays is not None:
        np.savez(folder / "curves.npz", **arrays)


def _curves_folder(folder, conv):
    rng = np.random.RandomState(0)
    K = 6
    if conv:
        ns, ws = [(10,), (4, 5, 5), (3, 12, 12)], [(10, 100), (4, 3, 3, 3), (3, 1, 3, 3)]
        names, syn = ["s^0", "s^1", "s^2"], ["W_{01}", "W_{12}", "W_{2x}"]
    else:
        ns, ws = [(10,), (12,), (8,)], [(10, 12), (12, 8), (8, 20)]
        names, syn = ["s^0", "s^1", "s^2"], ["W_{01}", "W_{12}", "W_{2x}"]
    nS, dS, NT, DT = _processes(rng, K, ns, ws)
    arrays = {}
    for i in range(3):
        arrays[f"nS_{i}"], arrays[f"dS_{i}"] = nS[i], dS[i]
        arrays[f"NT_{i}"], arrays[f"DT_{i}"] = NT[i], DT[i]
    res = {"action": "plotcurves", "model": "conv" if conv else "ep_disc_2hidden",
           "title": "synthetic", "toymodel": False, "conv": conv, "T": 30, "Kmax": K,
           "beta": 0.1, "neuron_names": names, "synapse_names": syn,
           "metrics": mt.gdu_metrics(nS, dS, NT, DT, names, syn)}
    _write(folder, res, arrays)


@pytest.mark.parametrize("conv", [False, True])
def test_render_plotcurves(tmp_path, conv):
    _curves_folder(tmp_path, conv)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    _check_pngs(tmp_path, ["S.png", "T.png", "hist.png"])


@pytest.mark.parametrize("epochs,bptt", [(1, False), (3, False), (1, True), (3, True)])
def test_render_train(tmp_path, epochs, bptt):
    res = {"action": "train", "model": "ep_disc_1hidden", "method": "EP",
           "title": "EPdisc 784-512-10, T=40, K=15, beta=0.1",
           "error_train_tab": list(np.linspace(10, 3, epochs)),
           "error_test_tab": list(np.linspace(11, 4, epochs)),
           "seconds_tab": [10.0] * epochs, "elapsed_time": 10.0 * epochs}
    if bptt:
        res.update(error_train_bptt_tab=list(np.linspace(9, 2, epochs)),
                   error_test_bptt_tab=list(np.linspace(10, 3, epochs)),
                   seconds_bptt_tab=[5.0] * epochs)
    _write(tmp_path, res)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    _check_pngs(tmp_path, ["error.png"])


def test_render_receipe(tmp_path):
    names = ["W_{01}", "W_{12}", "W_{2x}"]
    per = [{"same_sign_total": [90.0, 80.0, 70.0], "same_sign": [85.0, 75.0, 60.0],
            "both_zero": [5.0, 5.0, 10.0]}] * 2
    res = {"action": "receipe", "title": "receipe", "layer_names": names, "trials": 2,
           "per_trial": per, "mean": per[0], "std": {k: [1.0] * 3 for k in per[0]}}
    _write(tmp_path, res)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    _check_pngs(tmp_path, ["receipe.png"])


def test_render_returns_paths(tmp_path):
    _curves_folder(tmp_path, conv=False)
    paths = pf.render(str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["S.png", "T.png", "hist.png"]


def _env_without(*names, **extra):
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


HEADLESS = {  # the two ways figures cannot be shown: no display at all, or a non-interactive backend
    "no-display": _env_without("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND"),
    "agg-backend": _env_without("WAYLAND_DISPLAY", DISPLAY=":99", MPLBACKEND="agg"),
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY/WAYLAND_DISPLAY are Linux's")
@pytest.mark.parametrize("case", sorted(HEADLESS))
def test_show_without_display_says_so_and_saves(tmp_path, case):
    _curves_folder(tmp_path, conv=False)
    r = _run(tmp_path, "--show", env=HEADLESS[case])
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("plotFunctions: cannot show the figures here")
    assert ("DISPLAY" if case == "no-display" else "agg") in lines[0]
    assert lines[0].endswith(f"the PNGs are saved in {tmp_path}")
    _check_pngs(tmp_path, ["S.png", "T.png", "hist.png"])
    assert sorted(os.path.basename(p) for p in r.stdout.split()) == ["S.png", "T.png", "hist.png"]


def test_display_problem(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert "DISPLAY" in pf.display_problem()
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setattr(pf.matplotlib, "get_backend", lambda: "TkAgg")
    assert pf.display_problem() is None  # a display and an interactive backend: show
    monkeypatch.setattr(pf.matplotlib, "get_backend", lambda: "agg")
    assert "non-interactive" in pf.display_problem()
    monkeypatch.setattr(sys, "platform", "darwin")  # no DISPLAY needed there, only the backend counts
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setattr(pf.matplotlib, "get_backend", lambda: "macosx")
    assert pf.display_problem() is None


@pytest.mark.parametrize("bad", ["missing", "action"])
def test_errors_exit_2(tmp_path, bad):
    if bad == "action":
        _write(tmp_path, {"action": "nonsense"})
    r = _run(tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plotFunctions: error:")
    assert "Traceback" not in r.stderr


def test_step_cosines_skip_steps_without_signal():
    """A step where BPTT is exactly zero and EP leaves round-off carries no signal: skipped, not 0."""
    a = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    b = np.array([[1.0, 2.0], [1e-12, -1e-12], [-3.0, 1.0]])
    assert mt.step_cosines(a, b) == pytest.approx(0.0)  # (1 + (-1)) / 2, the middle step skipped
    assert mt.step_cosines(np.zeros((3, 2)), np.zeros((3, 2))) == 1.0
    # a real disagreement is kept: EP silent where BPTT is not
    assert mt.step_cosines(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.0], [1.0, 1.0]])) == pytest.approx(0.5)
    # increments of a cumulated process, made lazily
    X = np.cumsum(np.arange(6.0).reshape(3, 2), 0)
    inc = mt._Increments(X)
    assert len(inc) == 3 and np.allclose([inc[k] for k in range(3)], np.arange(6.0).reshape(3, 2))


def test_process_cosine_weighs_steps_by_size():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 0.01]])
    assert mt.process_cosine(a, b) == pytest.approx(1.0 / np.sqrt(1.0001))
    assert mt.step_cosines(a, b) == pytest.approx(0.5)  # the tiny EP-only step counts fully here
    assert mt.process_cosine(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
