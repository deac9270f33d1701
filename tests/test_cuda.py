"""CUDA smoke tests: every action on every network through main.py on cuda:0 (--device-label 0), and
one EP batch and one BPTT batch of every network, on both paths, on cuda:0 in float64 against the
same on the CPU.  Skipped where torch sees no CUDA device; scripts/cuda_check.sh runs them (with the
golden tests, which also run on cuda:0 there).

The command-line runs use tiny settings (40 examples, one training batch, a few steps) and the path
each network runs by default (the speed layer for EPcont and EPdisc, the plain path for toyEPcont and
convEP); the in-process comparison builds each network on both paths explicitly.  The toy model has
no dataset, so it has no train action (main.py refuses it): plotcurves and receipe only.
"""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from test_cli import REPO, decodable_png, io_args, load, ok, run_many  # main.py as test_cli runs it (ENV, TIMEOUT)

sys.path.insert(0, str(REPO))
import main  # noqa: E402
import netFunctions as nf  # noqa: E402
from netClasses import build_net  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")

DEVICE_LABEL = 0
DEVICE = f"cuda:{DEVICE_LABEL}"
DEVICE_TAG = f"cuda{DEVICE_LABEL}"  # the train folder is <name>/<tag>-<date>/Trial-1
TOL = 1e-10  # float64, cuda:0 vs CPU: only the summation order differs (golden tests: <= 6e-12 there)

# network: (class, flags of the network, flags only a training run takes, model folder name)
NETS = {
    "EPcont": ("EPcont", ["--size_tab", 10, 16, 784, "--T", 8, "--Kmax", 3, "--beta", 0.5, "--dt", 0.2],
               ["--lr_tab", 0.05, 0.1], "ep_cont_1hidden"),
    "EPdisc": ("EPdisc", ["--discrete", "--size_tab", 10, 16, 784, "--T", 8, "--Kmax", 3, "--beta", 0.1],
               ["--lr_tab", 0.04, 0.08], "ep_disc_1hidden"),
    "toyEPcont": ("toyEPcont", ["--toymodel", "--no-clamp", "--activation-function", "tanh", "--size_tab", 10, 50, 5,
                                "--dt", 0.08, "--T", 20, "--Kmax", 5, "--beta", 0.01],
                  ["--lr_tab", 0.1, 0.1, 0.1], "ep_cont_toymodel"),
    "convEP": ("convEP", ["--C_tab", 64, 32, 1, "--size_tab", 10, "--activation-function", "hardsigm",
                          "--T", 4, "--Kmax", 2, "--beta", 0.4],
               ["--lr_tab", 0.015, 0.035, 0.15], "ep_conv"),
}
ACTIONS = {  # the files each action leaves in its Trial folder
    "train": {"results.json", "config.json", "hyperparameters.txt", "checkpoint.pt", "error.png"},
    "plotcurves": {"results.json", "config.json", "hyperparameters.txt", "curves.npz", "S.png", "T.png", "hist.png"},
    "receipe": {"results.json", "config.json", "hyperparameters.txt", "receipe.png"},
}
RUNS = [(net, action) for net in NETS for action in ACTIONS if not (net == "toyEPcont" and action == "train")]


def command(net, action):
    _, flags, train_flags, _ = NETS[net]
    argv = list(flags) + ["--action", action, "--device-label", DEVICE_LABEL, "--seed", 1, "--quiet"]
    if action == "train":  # one batch of 40, both methods (--benchmark: BPTT from the same init)
        argv += train_flags + ["--benchmark", "--epochs", 1, "--train-subset", 40, "--test-subset", 40,
                               "--batch-size", 40]
    else:
        argv += ["--batch-size", 4] + ([] if net == "toyEPcont" else ["--train-subset", 40])
        if action == "receipe":
            argv += ["--trials", 1]
    return [str(a) for a in argv]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    procs = run_many([command(net, action) + io_args(root / net / action) for net, action in RUNS])
    return {k: (root / k[0] / k[1], p) for k, p in zip(RUNS, procs)}


@pytest.mark.parametrize("net,action", RUNS, ids=[f"{n}-{a}" for n, a in RUNS])
def test_cli_action_on_cuda(net, action, cli_runs):
    results_dir, proc = cli_runs[(net, action)]
    ok(proc)
    name = NETS[net][3]
    trials = sorted(results_dir.glob(f"{name}/**/Trial-1"))
    assert len(trials) == 1, sorted(str(p.relative_to(results_dir)) for p in results_dir.rglob("*"))
    folder = trials[0]
    if action == "train":
        assert folder.parent.name.startswith(DEVICE_TAG + "-"), folder
    files = {p.name for p in folder.iterdir()}
    assert ACTIONS[action] <= files, (action, sorted(files))
    cfg = load(folder / "config.json")
    assert cfg["device"] == DEVICE and cfg["args"]["device_label"] == DEVICE_LABEL, cfg
    res = load(folder / "results.json")
    assert res["action"] == action, res
    if action == "train":
        assert res["epochs_done"] == 1
        for key in ("error_train_tab", "error_test_tab", "error_train_bptt_tab", "error_test_bptt_tab"):
            assert len(res[key]) == 1 and 0 <= res[key][0] <= 100, (key, res[key])
        ck = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert ck, "empty checkpoint"
    elif action == "plotcurves":
        for group in ("neurons", "synapses"):
            for layer, vals in res["metrics"][group].items():
                assert all(math.isfinite(v) for v in vals.values()), (layer, vals)
    else:
        assert res["trials"] == 1
        assert all(0 <= v <= 100 for v in res["mean"]["same_sign_total"]), res["mean"]
    for png in ACTIONS[action]:
        if png.endswith(".png"):
            decodable_png(folder / png)


# ------------------------------------------------------------------------------------------------
# one EP batch and one BPTT batch, cuda:0 against the CPU

def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def batch(cfg, B=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    if cfg.C_tab:
        x = torch.rand(B, 1, 28, 28, generator=g, dtype=torch.float64)
    else:
        x = torch.rand(B, cfg.size_tab[-1], generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, cfg.size_tab[0], (B,), generator=g), cfg.size_tab[0]).to(torch.float64)
    return x, y


def one_batch(net, x, y, method):
    s0 = nf.ep_batch(net, x, y) if method == "EP" else nf.bptt_batch(net, x, y)
    return [s0] + [p.detach() for p in net.param_list()]


@pytest.mark.parametrize("method", ["EP", "BPTT"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("net", list(NETS))
def test_one_batch_on_cuda_equals_cpu(net, fast, method):
    cls, flags, train_flags, _ = NETS[net]
    cfg = main.parse_args([str(a) for a in flags + train_flags])
    torch.manual_seed(0)
    cpu = build_net(cfg, fast=fast).double()
    assert type(cpu).__name__ == cls
    gpu = build_net(cfg, fast=fast).double().to(DEVICE)
    gpu.load_state_dict(cpu.state_dict())
    assert gpu.fast == cpu.fast and all(p.device == torch.device(DEVICE) for p in gpu.parameters())
    x, y = batch(cfg)
    want = one_batch(cpu, x, y, method)
    got = one_batch(gpu, x.to(DEVICE), y.to(DEVICE), method)
    assert all(t.device == torch.device(DEVICE) for t in got)
    errs = [rel(a, b) for a, b in zip(got, want)]
    assert max(errs) <= TOL, f"{net} ({'fast' if fast else 'plain'}, {method}): s0 and parameters {errs}"


# ------------------------------------------------------------------------------------------------
# populations on cuda:0: float64 against the CPU, and CUDA-graph replay against eager batches

POP_KINDS = {  # (flags of the members' Config, input shape of one example)
    "EPdisc": (dict(discrete=True, dt=1.0, size_tab=[10, 16, 784], T=8, Kmax=3), (784,)),
    "EPcont": (dict(dt=0.2, size_tab=[10, 16, 784], T=8, Kmax=3), (784,)),
    "convEP": (dict(size_tab=[10], C_tab=[6, 4, 1], activation_function="hardsigm", T=6, Kmax=3), (1, 28, 28)),
}


def population_batches(kind, device, dtype, n=3):
    g = torch.Generator().manual_seed(0)
    shape = POP_KINDS[kind][1]
    for _ in range(n):
        x = torch.rand(3, 5, *shape, generator=g, dtype=dtype)
        y = F.one_hot(torch.randint(10, (3, 5), generator=g), 10).to(dtype)
        yield x.to(device), y.to(device), torch.tensor([1.0, 1.0, -1.0], dtype=dtype, device=device)


def population(kind, dtype, device):
    import population as pp
    from test_population import members
    base = dict(action="train", training_method="EP", benchmark=True, device_label=DEVICE_LABEL,
                **POP_KINDS[kind][0])
    pop = pp.Population(members(base), dtype=dtype, device=torch.device(device))
    return pp, pop


@pytest.mark.parametrize("kind", list(POP_KINDS))
def test_a_population_on_cuda_equals_the_cpu_float64(kind):
    """Three batches of EP and of BPTT for a 3-member population (three nudgings) on cuda:0 and on the
    CPU, float64: weights within TOL."""
    pp, cpu = population(kind, torch.float64, "cpu")
    _, gpu = population(kind, torch.float64, DEVICE)
    for (x, y, sign), (xg, yg, sg) in zip(population_batches(kind, "cpu", torch.float64),
                                          population_batches(kind, DEVICE, torch.float64)):
        for rc, rg in zip(cpu.runs, gpu.runs):
            rc.batch(x, y, sign)
            rg.batch(xg, yg, sg)
    errs = [rel(pg, pc) for rc, rg in zip(cpu.runs, gpu.runs) for pc, pg in zip(rc.stack.P, rg.stack.P)]
    assert max(errs) <= TOL, errs


@pytest.mark.parametrize("kind", list(POP_KINDS))
def test_cuda_graph_replay_equals_eager_batches(kind):
    """population.GraphedBatch: each method's batch captured once (after warm-up batches, whose updates
    it must undo) and replayed on three batches gives the weights and predictions of the same three
    batches run eagerly, float32 (the same kernels: equal within 1e-6 relative), and it was captured
    (run_batch falls back to eager batches with a warning if capture fails: that must not happen)."""
    pp, eager = population(kind, torch.float32, DEVICE)
    _, graphed = population(kind, torch.float32, DEVICE)
    warnings = []
    for x, y, sign in population_batches(kind, DEVICE, torch.float32):
        for re_, rg in zip(eager.runs, graphed.runs):
            s_e = pp.run_batch(re_, x, y, sign, False, print)
            s_g = pp.run_batch(rg, x, y, sign, True, warnings.append)
            assert rel(s_g, s_e) <= 1e-6
    assert warnings == [] and all(isinstance(r.graph, pp.GraphedBatch) for r in graphed.runs)
    errs = [rel(pg, pe) for re_, rg in zip(eager.runs, graphed.runs) for pe, pg in zip(re_.stack.P, rg.stack.P)]
    assert max(errs) <= 1e-6, errs
