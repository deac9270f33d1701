"""Tests of population.py: every member of a population is its single run.

- float64, random data: each member's free states, EP updates, BPTT gradients and weights after
  three batches equal its single net's (netFunctions.ep_batch / bptt_batch on build_net(cfg),
  plain and fast paths) to 1e-12 relative, with different seeds, betas, learning rates and the
  three nudgings in one population; the same for convEP.
- float32, MNIST: a population trained by train_population and its members trained alone by
  experiment.run give the same per-epoch tables (within the measured tolerances below; the conv
  net too); a
  diverging member is reported and frozen while the others go on; a member's folder resumes
  alone with main.py --resume to the numbers of its single run's folder resumed alike.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import experiment  # noqa: E402
import netFunctions as nf  # noqa: E402
import population as pp  # noqa: E402
from config import Config  # noqa: E402
from netClasses import build_net  # noqa: E402

F64 = torch.float64
RAW = REPO / "data" / "MNIST" / "raw"
HAVE_MNIST = all((RAW / n).is_file() or (RAW / (n + ".gz")).is_file()
                 for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))

# float32 tolerances, population vs the same members run alone (experiment.run), 2 epochs of 400
# training / 200 test images, T 8, Kmax 3.  Measured with `members` on 72 members (24 populations
# of 3, seeds 1..36, P and EB, EP + BPTT): no error-table entry differed (0 examples); the largest
# loss difference was 8.6e-8 (EB, EP; P: 1.5e-8; losses ~0.4), and 6.6e-7 with betas 0.1, 0.2, 0.3.
# After a third epoch by main.py --resume (test below): 0 examples, 8.6e-8.  Allowed: one example
# per table entry, 1e-5 on losses.
ONE_EXAMPLE_TRAIN, ONE_EXAMPLE_TEST = 100 / 400, 100 / 200
LOSS_TOL = 1e-5
ERROR_KEYS = ("error_train_tab", "error_test_tab", "error_train_bptt_tab", "error_test_bptt_tab")
LOSS_KEYS = ("loss_tab", "loss_bptt_tab")


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def members(base, seeds=(1, 2, 3)):
    """Three members: different seeds, betas, learning rates, one symmetric and one random-sign."""
    spec = [(0.5, [0.05, 0.1, 0.08], "one-sided"), (0.3, [0.02, 0.2, 0.1], "symmetric"),
            (0.2, [0.1, 0.05, 0.04], "random-sign")]
    C_tab = base.get("C_tab")
    n_lr = len(base["size_tab"]) + len(C_tab) - 1 if C_tab else len(base["size_tab"]) - 1  # convEP: fc + conv layers
    return [Config(**base, seed=s, beta=beta, lr_tab=lr[:n_lr], nudging=nud,
                   explicit=sorted(base) + ["seed", "beta", "lr_tab", "nudging"])
            for s, (beta, lr, nud) in zip(seeds, spec)]


# ------------------------------------------------------------------------------------------------
# float64: the batched computation is each member's own

KINDS = {  # the settings of the float64 test; P: EPdisc, EB: EPcont
    "P": dict(discrete=True, dt=1.0, activation_function="sigm"),
    "P-leaky-tanh": dict(discrete=True, dt=0.5, activation_function="tanh"),
    "EB-clamp": dict(dt=0.2, activation_function="sigm"),
    "EB-noclamp-tanh": dict(dt=0.2, activation_function="tanh", no_clamp=True),
    "EB-clamp-hardsigm": dict(dt=0.2, activation_function="hardsigm"),
}


def single_net(pop_cfg, fast):
    """The member's net as its single run builds it, in float64, on the chosen path."""
    nf.set_seed(pop_cfg.seed)
    torch.manual_seed(pop_cfg.seed)
    return build_net(pop_cfg, fast=fast).double()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_members_equal_their_single_nets_float64(kind, fast, one_thread):
    """Free states, BPTT gradients and weights (EP and BPTT) to 1e-12 relative.  EP updates too,
    except where an update is a small difference of large Hebbian terms (the symmetric update of
    the layers the nudge reaches last in Kmax = 3 steps): there the single net's own two paths,
    fast and plain, already differ by up to 2.3e-11 (measured), so an EP update must agree with the
    single net's to 1e-12 + 4 x the gap between those two paths."""
    base = dict(action="train", size_tab=[10, 16, 12, 784], T=8, Kmax=3, training_method="EP", benchmark=True,
                **KINDS[kind])
    cfgs = members(base)
    pop = pp.Population(cfgs, dtype=F64)
    ep, bptt = (r.stack for r in pop.runs)
    nets = [single_net(c, fast) for c in cfgs]
    twins = [single_net(c, not fast) for c in cfgs]  # the other path: the yardstick of the EP updates
    bnets = [single_net(c, fast) for c in cfgs]
    for m, net in enumerate(nets):  # the same initial weights, exactly
        assert all(torch.equal(p[m], q) for p, q in zip(ep.P, net.param_list()))
    g = torch.Generator().manual_seed(0)
    worst, update = {}, 0.0

    def note(what, err):
        worst[what] = max(worst.get(what, 0.0), err)

    for batch, signs in enumerate([[1, 1, 1], [1, 1, -1], [1, 1, 1]]):  # random-sign: member 2's signs
        x = torch.rand(3, 5, 784, generator=g, dtype=F64)
        y = torch.nn.functional.one_hot(torch.randint(10, (3, 5), generator=g), 10).to(F64)
        s_pop = ep.free_phase(x)
        before = [p.clone() for p in ep.P]
        ep.ep_batch(x, y, torch.tensor(signs, dtype=F64))
        _, grads = bptt.bptt_grads(x, y)
        bptt.bptt_batch(x, y)
        for m in range(3):
            s = nets[m].free_phase(x[m])
            note("free states", max(rel(s_pop[n][m], s[n]) for n in range(3)))
            old, old_twin = ([p.clone() for p in n.param_list()] for n in (nets[m], twins[m]))
            for n in (nets[m], twins[m]):
                nf.ep_batch(n, x[m], y[m], cfgs[m].nudging, signs[m])
            for i, (p, q) in enumerate(zip(nets[m].param_list(), twins[m].param_list())):
                err, gap = rel(ep.P[i][m] - before[i][m], p - old[i]), rel(q - old_twin[i], p - old[i])
                note("EP update", err)
                note("EP update, fast vs plain single", gap)
                update = max(update, err / (1e-12 + 4 * gap))
                note("EP weights", rel(ep.P[i][m], p))
            _, _, g1 = bnets[m].bptt_grads(x[m], y[m])
            nf.bptt_batch(bnets[m], x[m], y[m])
            for i, p in enumerate(bnets[m].param_list()):
                note("BPTT gradient", rel(grads[i][m], g1[i]))
                note("BPTT weights", rel(bptt.P[i][m], p))
    # measured: free states <= 5.4e-15, BPTT gradients <= 3.4e-15, weights <= 2.3e-15; EP updates
    # <= 2.3e-13, except the symmetric member's in EB-clamp (1.0e-11 fast, 1.8e-11 plain; the paths'
    # gap 2.3e-11) and EB-clamp-hardsigm (9.2e-13; gap 8.8e-13); err / (1e-12 + 4 gap) <= 0.36
    strict = {k: v for k, v in worst.items() if not k.startswith("EP update")}
    assert max(strict.values()) < 1e-12, worst
    assert update <= 1.0, worst


def test_member_weights_have_the_single_nets_state_dict_form():
    cfgs = members(dict(action="train", size_tab=[10, 16, 784], T=4, Kmax=2, discrete=True, dt=1.0))
    pop = pp.Population(cfgs)
    sd = pp.MemberWeights(pop.runs[0].stack, 1).state_dict()
    ref = single_net(cfgs[1], True).float().state_dict()
    assert list(sd) == list(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


@pytest.mark.parametrize("change,field", [(dict(T=9), "T"), (dict(size_tab=[10, 8, 784]), "size_tab"),
                                          (dict(batch_size=7), "batch_size"), (dict(no_clamp=True), "no_clamp")])
def test_unstackable_members_are_refused_naming_the_field(change, field):
    base = dict(action="train", size_tab=[10, 16, 784], T=4, Kmax=2)
    cfgs = members(base)
    cfgs[2] = cfgs[2].replace(**change)
    with pytest.raises(ValueError, match=rf"differ in {field} \(member 0: .*member 2: "):
        pp.Population(cfgs)


CONV = dict(action="train", size_tab=[10], C_tab=[6, 4, 1], activation_function="hardsigm")


def test_conv_members_equal_their_single_nets_float64(one_thread):
    """convEP (StackedConv: vmap over netClasses' own step, drive and hebbian), three members with
    different seeds, betas, learning rates and nudgings: free states, BPTT gradients and the weights
    of both methods after each of three batches equal each member's single net's (plain path, its
    only path) to 1e-12 relative.  Measured: states <= 1.4e-14, gradients <= 1.8e-15, EP weights
    <= 6.0e-14, BPTT weights <= 1.1e-16."""
    cfgs = members(dict(CONV, T=6, Kmax=3, training_method="EP", benchmark=True))
    pop = pp.Population(cfgs, dtype=F64)
    ep, bptt = (r.stack for r in pop.runs)
    assert isinstance(ep, pp.StackedConv)
    nets, bnets = ([single_net(c, True) for c in cfgs] for _ in range(2))
    assert not nets[0].fast  # convEP has no speed layer
    g = torch.Generator().manual_seed(0)
    worst = {}
    for signs in ([1, 1, 1], [1, 1, -1], [1, 1, 1]):
        x = torch.rand(3, 5, 1, 28, 28, generator=g, dtype=F64)
        y = torch.nn.functional.one_hot(torch.randint(10, (3, 5), generator=g), 10).to(F64)
        s_pop = ep.free_phase(x)
        _, grads = bptt.bptt_grads(x, y)
        ep.ep_batch(x, y, torch.tensor(signs, dtype=F64))
        bptt.bptt_batch(x, y)
        for m in range(3):
            s = nets[m].free_phase(x[m])
            _, _, g1 = bnets[m].bptt_grads(x[m], y[m])
            nf.ep_batch(nets[m], x[m], y[m], cfgs[m].nudging, signs[m])
            nf.bptt_batch(bnets[m], x[m], y[m])
            for what, err in (("free states", max(rel(s_pop[n][m], s[n]) for n in range(nets[m].ns))),
                              ("BPTT gradients", max(rel(a[m], b) for a, b in zip(grads, g1))),
                              ("EP weights", max(rel(p[m], q) for p, q in zip(ep.P, nets[m].param_list()))),
                              ("BPTT weights", max(rel(p[m], q) for p, q in zip(bptt.P, bnets[m].param_list())))):
                worst[what] = max(worst.get(what, 0.0), err)
    assert max(worst.values()) < 1e-12, worst


def test_the_toy_model_cannot_be_stacked():
    cfgs = [Config(action="train", toymodel=True, size_tab=[10, 50, 5], lr_tab=[0.1, 0.1], seed=s) for s in (1, 2)]
    with pytest.raises(ValueError, match="not the toy model"):
        pp.Population(cfgs)


def test_the_projection_times_a_copy_and_leaves_the_population_alone(one_thread):
    """log_projection times real batches of each method on copies of the stacks: the population's
    weights and learning rates are untouched, and the projection is a positive number of seconds."""
    cfgs = [c.replace(epochs=3) for c in members(dict(action="train", size_tab=[10, 16, 784], T=4, Kmax=2,
                                                      training_method="EP", benchmark=True))]
    pop = pp.Population(cfgs)
    before = [[p.clone() for p in r.stack.P] + [r.stack.lr.clone()] for r in pop.runs]
    g = torch.Generator().manual_seed(0)
    X, Xte = torch.rand(100, 784, generator=g), torch.rand(30, 784, generator=g)
    Y = torch.nn.functional.one_hot(torch.randint(10, (100,), generator=g), 10).float()
    lines = []
    total = pp.log_projection(pop, X, Y, Xte, Y[:30], lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert total > 0 and math.isfinite(total)
    assert len(lines) == 1 and lines[0].startswith("projected wall time: ") and "3 epochs of 3 members (EP " in lines[0]
    for r, old in zip(pop.runs, before):
        assert all(torch.equal(p, q) for p, q in zip(r.stack.P + [r.stack.lr], old))


# ------------------------------------------------------------------------------------------------
# float32 on MNIST: train_population against experiment.run

def f32_base(discrete, results_dir, **kw):
    base = dict(action="train", discrete=discrete, size_tab=[10, 512, 784], T=8, Kmax=3,
                dt=1.0 if discrete else 0.2, training_method="EP", benchmark=True, activation_function="sigm",
                train_subset=400, test_subset=200, epochs=2, quiet=True, results_dir=str(results_dir),
                data_dir=str(REPO / "data"))
    base.update(kw)
    return base


def quiet_log(*a, **k):
    pass


@pytest.fixture(scope="module", params=["P", "EB"])
def trained(request, tmp_path_factory):
    """A population of three and the same three members run alone, 2 epochs each."""
    root = tmp_path_factory.mktemp(f"pop-{request.param}")
    cfgs = members(f32_base(request.param == "P", root / "population"))
    outcomes = pp.train_population(cfgs, log=quiet_log, figures=False)
    singles = [experiment.run(c.replace(results_dir=str(root / "single")), log=quiet_log) for c in cfgs]
    return cfgs, outcomes, singles


def assert_tables_close(a, b, keys=ERROR_KEYS + LOSS_KEYS):
    for k in keys:
        assert len(a[k]) == len(b[k]), k
        tol = LOSS_TOL if k in LOSS_KEYS else ONE_EXAMPLE_TRAIN if "train" in k else ONE_EXAMPLE_TEST
        assert all(abs(u - v) <= tol + 1e-12 for u, v in zip(a[k], b[k])), (k, a[k], b[k])


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST missing in {RAW}")
def test_population_equals_its_members_run_alone(trained):
    cfgs, outcomes, singles = trained
    for o, s in zip(outcomes, singles):
        assert o.code == s.code == 0
        assert o.results["epochs_done"] == s.results["epochs_done"] == 2
        assert_tables_close(o.results, s.results)
        for k in ("action", "model", "title", "method", "seed"):
            assert o.results[k] == s.results[k], k


# convEP, float32: population vs members alone, 2 epochs of 200 training / 100 test images, T 6, Kmax 3.
# Measured on 24 members (8 populations of 3, seeds 1..24, EP + BPTT): 23 gave identical error tables
# and losses within 1.9e-8; one (seed 7, EP) drifted apart after a max-pool index flipped in its fifth
# batch (two pooled values within round-off of each other, decided differently by the grouped and the
# single convolution's summation order): 4 training examples, 1 test example, loss 0.037.  A flip is
# a discontinuity of the conv net itself, so no tolerance can be tight for every seed; allowed: 2.5x
# the measured worst (10 of 200 training examples, 3 of 100 test examples, 0.1 on losses).
CONV_TRAIN_TOL, CONV_TEST_TOL, CONV_LOSS_TOL = 5.0, 3.0, 0.1


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST missing in {RAW}")
def test_conv_population_equals_its_members_run_alone(tmp_path):
    base = dict(CONV, T=6, Kmax=3, training_method="EP", benchmark=True, train_subset=200, test_subset=100,
                epochs=2, quiet=True, data_dir=str(REPO / "data"))
    cfgs = members(dict(base, results_dir=str(tmp_path / "population")))
    outcomes = pp.train_population(cfgs, log=quiet_log, figures=False)
    singles = [experiment.run(c.replace(results_dir=str(tmp_path / "single")), log=quiet_log) for c in cfgs]
    for o, s in zip(outcomes, singles):
        assert o.code == s.code == 0 and o.results["epochs_done"] == s.results["epochs_done"] == 2
        for k in ERROR_KEYS + LOSS_KEYS:
            tol = CONV_LOSS_TOL if k in LOSS_KEYS else CONV_TRAIN_TOL if "train" in k else CONV_TEST_TOL
            assert len(o.results[k]) == len(s.results[k]) == 2, k
            assert all(abs(u - v) <= tol for u, v in zip(o.results[k], s.results[k])), (k, o.results[k], s.results[k])


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST missing in {RAW}")
def test_member_folders_hold_the_single_runs_files(trained):
    cfgs, outcomes, singles = trained
    seeds = [c.seed for c in cfgs]
    for m, (o, s) in enumerate(zip(outcomes, singles)):
        names = {"results.json", "checkpoint.pt", "config.json", "hyperparameters.txt"}
        assert names <= {p.name for p in o.folder.iterdir()}
        assert o.folder.parent.parent.name == s.folder.parent.parent.name  # the same model name
        rec, ref = (json.loads((f / "config.json").read_text()) for f in (o.folder, s.folder))
        assert rec["population"]["size"] == 3 and rec["population"]["members"] == seeds
        assert rec["population"]["index"] == m
        assert {k: v for k, v in rec["args"].items() if k != "results_dir"} == \
               {k: v for k, v in ref["args"].items() if k != "results_dir"}
        assert (o.folder / "hyperparameters.txt").read_text().split("\n")[1:] == \
               (s.folder / "hyperparameters.txt").read_text().split("\n")[1:]
        ck, ck1 = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (o.folder, s.folder))
        assert set(ck) == set(ck1) and ck["epoch"] == ck1["epoch"] == 2
        for net in ("net", "net_bptt"):
            assert {k: v.shape for k, v in ck[net].items()} == {k: v.shape for k, v in ck1[net].items()}
        assert ck["results"] == json.loads((o.folder / "results.json").read_text())


def main_resume(folder, epochs):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, "main.py", "--resume", str(folder), "--epochs", str(epochs), "--quiet"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST missing in {RAW}")
def test_a_member_resumes_alone_like_its_single_run(trained, tmp_path):
    """The random-sign member's folder and its single run's folder, each resumed for a third epoch
    with main.py --resume: the same tables (within the tolerances)."""
    cfgs, outcomes, singles = trained
    folders = [shutil.copytree(r.folder, tmp_path / name) for r, name in ((outcomes[2], "pop"), (singles[2], "single"))]
    procs = [main_resume(f, 3) for f in folders]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = (json.loads((f / "results.json").read_text()) for f in folders)
    assert a["epochs_done"] == b["epochs_done"] == 3
    assert_tables_close(a, b)
    rec = json.loads((folders[0] / "config.json").read_text())
    assert rec["population"]["size"] == 3 and len(rec["resumed"]) == 1 and rec["args"]["epochs"] == 3


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST missing in {RAW}")
def test_a_diverging_member_is_reported_and_frozen(tmp_path):
    """Member 1 (learning rates 1e3) diverges in its BPTT copy's first epoch: its results.json gets
    its single run's "diverged" message and keeps the finished (epoch, method) entries; the other
    two train on to their single runs' numbers."""
    base = dict(action="train", size_tab=[10, 64, 784], no_clamp=True, activation_function="tanh", dt=0.5,
                T=20, Kmax=5, beta=0.5, train_subset=500, test_subset=100, epochs=2, benchmark=True,
                training_method="EP", quiet=True, data_dir=str(REPO / "data"))
    cfgs = [Config(**base, seed=s, lr_tab=lr, results_dir=str(tmp_path / "pop"),
                   explicit=sorted(base) + ["seed", "lr_tab", "results_dir"])
            for s, lr in ((1, [0.05, 0.1]), (2, [1e3, 1e3]), (3, [0.05, 0.1]))]
    log = []
    outcomes = pp.train_population(cfgs, log=lambda *a, **k: log.append(" ".join(map(str, a))), figures=False)
    singles = [experiment.run(c.replace(results_dir=str(tmp_path / "single")), log=quiet_log) for c in cfgs]
    assert [o.code for o in outcomes] == [s.code for s in singles] == [0, 3, 0]
    assert outcomes[1].message == singles[1].message == "diverged: epoch 1, batch 6, method BPTT (state is NaN/inf)"
    assert any("member 1" in line and "diverged" in line for line in log)
    on_disk = json.loads((outcomes[1].folder / "results.json").read_text())
    assert on_disk["diverged"] == singles[1].message and on_disk["epochs_done"] == 0
    assert len(on_disk["error_test_tab"]) == 1 and on_disk["error_test_bptt_tab"] == []
    assert not (outcomes[1].folder / "checkpoint.pt").exists()
    # the EP copy with learning rates 1e3 is chaotic (its loss ~1e7 differs between runs): errors only
    assert_tables_close(outcomes[1].results, singles[1].results, ERROR_KEYS)
    for m in (0, 2):
        assert outcomes[m].results["epochs_done"] == 2
        assert_tables_close(outcomes[m].results, singles[m].results)
