"""Benchmark: every Table-1 setting against this machine's measured limit.

    python bench.py                      # all six settings on the CPU, writes bench.json
    python bench.py --quick              # a reduced subset (CI smoke)
    python bench.py --device-label 0     # the same on cuda:0
    python bench.py --population 1 5 32  # ms per batch per member of populations of M runs vs single runs

For each setting (the paper's T, Kmax, beta, batch 20, random data of MNIST's shape, so no dataset
is needed): milliseconds per training batch for EP and for BPTT (median of several repeats, after
a warm-up), the time of one test pass (10 000 examples), the projected seconds per epoch (3 000
batches + one test pass), and the floating-point operations each batch really needs (formulas in
`flops_*` below) divided by the time: achieved GFLOP/s and its fraction of the measured fp32 GEMM
rate of this machine (the better of torch.mm's library and oneDNN's).  Also the wall time of one GDU plotcurves computation at reduced T.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastpath
import netFunctions as nf
from config import TABLE1, preset_config
from netClasses import build_net, conv_geometry

SETTINGS = TABLE1  # the paper's six Table-1 rows, as presets (config.py)
QUICK = {"P-1h": dict(), "P-conv": dict(T=20, Kmax=4)}
N_TRAIN, N_TEST, B = 60000, 10000, 20
HERE = Path(__file__).resolve().parent


def make_args(name, over=None, device_label=-1):
    """The preset's Config at batch B, with `over` applied (the dt rule included)."""
    return preset_config(name, batch_size=B, device_label=device_label, **(over or {}))


# ------------------------------------------------------------------------------------------------
# Floating-point operations (1 multiply-add = 2 FLOPs), counted from the equations.

def step_macs(args):
    """Multiply-adds of one recurrent step for ONE example, the static input drive excluded (it is
    computed once per batch)."""
    if args.C_tab:
        conv_out, pooled = conv_geometry(args.C_tab, args.size_tab, args.Fconv, args.Fpool, bool(args.padding))
        sizes = args.size_tab + [args.C_tab[0] * pooled[0] ** 2]
        fc = sum(2 * sizes[i] * sizes[i + 1] for i in range(len(args.size_tab)))  # forward + feedback
        convs = 0
        for j in range(len(args.C_tab) - 2):  # every conv but the bottom one (its input x is static)
            k = args.C_tab[j] * args.C_tab[j + 1] * args.Fconv ** 2 * conv_out[j] ** 2
            convs += 2 * k  # forward conv + transposed-conv feedback with the same kernel
        return fc + convs
    d = args.size_tab
    return sum(2 * d[n] * d[n + 1] for n in range(len(d) - 2))  # W_{n,n+1} used both ways


def drive_macs(args):
    if args.C_tab:
        conv_out, _ = conv_geometry(args.C_tab, args.size_tab, args.Fconv, args.Fpool, bool(args.padding))
        return args.C_tab[-2] * args.C_tab[-1] * args.Fconv ** 2 * conv_out[-1] ** 2
    return args.size_tab[-2] * args.size_tab[-1]


def n_weights(net):
    return sum(m.weight.numel() for m in net.layers)


def flops_ep(args, net):
    """T + Kmax steps, one input drive, and the Hebbian update (two phases, B-row outer products)."""
    return 2 * B * ((args.T + args.Kmax) * step_macs(args) + drive_macs(args) + 2 * n_weights(net))


def flops_bptt(args, net):
    """T steps forward (drive once), and the backward through the last Kmax steps (~2x forward:
    gradients w.r.t. states and weights), the input drive's weight gradient once."""
    return 2 * B * ((args.T + 2 * args.Kmax) * step_macs(args) + 2 * drive_macs(args))


def flops_test(args):
    return 2 * N_TEST * (args.T * step_macs(args) + drive_macs(args))


# ------------------------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def gemm_rates(device, m, n, reps, inner=1):
    """GFLOP/s of an (m x n) @ (n x n) fp32 product, per library: {"torch.mm": ...} and, on a CPU
    with oneDNN, {"onednn": ...} (the kernel fastpath uses for wide couplings; on AMD CPUs MKL, behind
    torch.mm, runs AVX2 code and oneDNN AVX-512, up to 2x apart).  The limit is the best of them."""
    a, w = torch.randn(m, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(m, n, device=device)
    fns = {"torch.mm": lambda: torch.mm(a, w, out=out)}
    if device.type == "cpu" and fastpath.onednn_linear is not None and torch.backends.mkldnn.is_available():
        fns["onednn"] = lambda: fastpath.onednn_linear(a, w, None, "none", [], "")
    return {k: 2 * m * n * n * inner / timed(lambda: [f() for _ in range(inner)], device, reps, warmup=2) / 1e9
            for k, f in fns.items()}


def gemm_gflops(device, n=2048, repeats=10):
    """The large-GEMM limit: the best library's rate on n x n x n."""
    return max(gemm_rates(device, n, n, repeats).values())


def gemm_small_gflops(device, m=B, n=512, repeats=200):
    """The rate of the GEMM shape the fully connected steps really run (batch 20 x 512 x 512):
    a second, more honest ceiling for them than the large-GEMM peak."""
    return max(gemm_rates(device, m, n, max(3, repeats // 20), inner=20).values())


@torch.no_grad()
def ep_batch_original_structure(net, x, y):
    """EP on the plain path with the input drive recomputed at every step, as the original does
    (the 'before' of --baseline and the first lever)."""
    P = net.param_list()
    s = net.initHidden(x.shape[0])
    for _ in range(net.T):
        s = net.step(s, net.drive(x, P), P)
    seq = s
    for _ in range(net.Kmax):
        s = net.step(s, net.drive(x, P), P, y, net.beta)
    net.ep_update(net.beta, x, s, seq)


def bench_setting(name, device, repeats, over=None, baseline=False, test_batch=1000):
    args = make_args(name, over, -1 if device.type == "cpu" else device.index or 0)
    torch.manual_seed(0)
    net = build_net(args, fast=not baseline).to(device)
    shape = (B, 1, 28, 28) if args.C_tab else (B, 784)
    x = torch.rand(*shape, device=device)
    y = torch.zeros(B, 10, device=device)
    y[torch.arange(B), torch.randint(10, (B,))] = 1
    ep_fn = ep_batch_original_structure if baseline else nf.ep_batch
    ep = timed(lambda: ep_fn(net, x, y), device, repeats)
    bptt = timed(lambda: nf.bptt_batch(net, x, y), device, repeats)
    xt = torch.rand(test_batch, *shape[1:], device=device)
    test = N_TEST // test_batch * timed(lambda: net.free_phase(xt), device, max(1, repeats // 3))
    nb = N_TRAIN // B
    fe, fb, ft = flops_ep(args, net), flops_bptt(args, net), flops_test(args)
    return dict(setting=name, T=args.T, Kmax=args.Kmax, ep_ms=1e3 * ep, bptt_ms=1e3 * bptt, test_s=test,
                ep_epoch_s=nb * ep + test, bptt_epoch_s=nb * bptt + test,
                ep_gflop_per_batch=fe / 1e9, bptt_gflop_per_batch=fb / 1e9, test_gflop=ft / 1e9,
                ep_gflops=fe / ep / 1e9, bptt_gflops=fb / bptt / 1e9, test_gflops=ft / test / 1e9,
                ep_floor_ms=None, reduced=bool(over))


LEVERS = [  # (label, EP batch function, fast path) applied cumulatively.  Thread counts are
    # compared in separate processes (--threads), not here: switching the pool per call is unfair
    ("plain step, input drive recomputed every step (the original's structure)", ep_batch_original_structure, False),
    ("+ static input drive once per batch", nf.ep_batch, False),
    ("+ in-place pre-scaled stepper, ping-pong buffers, fused EP update", nf.ep_batch, True),
]


def bench_levers(device, names=("P-1h", "P-2h"), rounds=15):
    """EP ms/batch of each lever.  The levers are timed interleaved, one batch each per round, and
    the median over rounds is reported: on a shared VM the speed drifts, and interleaving makes the
    comparison fair."""
    nets, data = {}, {}
    for name in names:
        args = make_args(name)
        for i, (_, _, fast) in enumerate(LEVERS):
            torch.manual_seed(0)
            nets[name, i] = build_net(args, fast=fast).to(device)
        y = torch.zeros(B, 10, device=device)
        y[:, 3] = 1
        data[name] = (torch.rand(B, 784, device=device), y)
    times = {key: [] for key in nets}
    for r in range(rounds + 1):
        for (name, i), net in nets.items():
            x, y = data[name]
            t = timed(lambda: LEVERS[i][1](net, x, y), device, 1, warmup=0)
            if r:  # round 0 is the warm-up
                times[name, i].append(t)
    rows = []
    for i, (label, *_rest) in enumerate(LEVERS):
        row = {"lever": label, **{name: 1e3 * statistics.median(times[name, i]) for name in names}}
        rows.append(row)
        print(f"{label:75s} " + "  ".join(f"{n} {row[n]:7.2f} ms" for n in names), flush=True)
    return rows


def bench_plotcurves(device, T=500):
    """One GDU computation (fig3-P-1h shape, T reduced): free phase + one backward + Kmax EP steps."""
    args = make_args("P-1h", dict(T=T, Kmax=10, beta=0.01, activation_function="tanh"))
    torch.manual_seed(0)
    net = build_net(args).to(device)
    x, y = torch.rand(B, 784, device=device), torch.zeros(B, 10, device=device)
    y[:, 3] = 1
    return dict(preset="fig3-P-1h", T=T, Kmax=10, seconds=timed(lambda: nf.compute_nSdSDT(net, x, y), device, 3))


POPULATION_SETTINGS = TABLE1  # the settings --population times (population.py stacks every one)


def bench_population(device, sizes, names=POPULATION_SETTINGS, repeats=5):
    """Milliseconds per batch per member of a population of M runs (population.py: one batched
    computation over the member dimension; on a GPU each batch replayed as a CUDA graph) against the
    single-run path (fast, as main.py trains), EP and BPTT, the preset's T and Kmax, batch B, random
    data; one process.  Populations and
    single runs are timed interleaved, one batch each per round (median over rounds): on a shared
    machine the speed drifts."""
    import population
    rows = []
    for name in names:
        args = make_args(name, dict(training_method="EP", benchmark=False))
        torch.manual_seed(0)
        single = build_net(args).to(device)
        x1 = torch.rand(B, *((1, 28, 28) if args.kind == "conv" else (784,)), device=device)
        y1 = torch.zeros(B, 10, device=device)
        y1[torch.arange(B), torch.randint(10, (B,))] = 1
        fns = {("single", "EP"): lambda: nf.ep_batch(single, x1, y1),
               ("single", "BPTT"): lambda: nf.bptt_batch(single, x1, y1)}
        for M in sizes:  # on a GPU each method's batch is replayed as a CUDA graph, as train_population does
            stack = population.Population([args.replace(seed=s) for s in range(M)], device=device).runs[0].stack
            x, y = x1.expand(M, *x1.shape).contiguous(), y1.expand(M, B, 10).contiguous()
            sign = torch.ones(M, device=device)
            for method in ("EP", "BPTT"):
                run = population.Run(method, population.copy_of(stack), "")
                fns[M, method] = (lambda r, x, y, sg: lambda: population.run_batch(r, x, y, sg, True, print))(run, x, y, sign)
        times = {k: [] for k in fns}
        for r in range(repeats + 1):
            for k, fn in fns.items():
                t = timed(fn, device, 1, warmup=0)
                if r:  # round 0 is the warm-up
                    times[k].append(t)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        for M in sizes:
            row = dict(setting=name, T=args.T, Kmax=args.Kmax, M=M,
                       ep_ms_per_member=ms[M, "EP"] / M, bptt_ms_per_member=ms[M, "BPTT"] / M,
                       single_ep_ms=ms["single", "EP"], single_bptt_ms=ms["single", "BPTT"])
            row["ep_speedup"] = row["single_ep_ms"] / row["ep_ms_per_member"]
            row["bptt_speedup"] = row["single_bptt_ms"] / row["bptt_ms_per_member"]
            rows.append(row)
            print(f"{name:6} {M:4d} {row['ep_ms_per_member']:9.3f} {row['single_ep_ms']:9.3f} {row['ep_speedup']:6.2f}x"
                  f" {row['bptt_ms_per_member']:10.3f} {row['single_bptt_ms']:10.3f} {row['bptt_speedup']:6.2f}x",
                  flush=True)
    return rows


def _main_py(*flags, threads=None):
    """A short P-1h EP training process (12 000 images) as main.py runs it."""
    cmd = [sys.executable, "main.py", "--preset", "P-1h", "--epochs", "1", "--no-benchmark", "--quiet", "--seed", "1",
           *map(str, flags)]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd, env


def _wall(cmds, together):
    """Wall seconds of running the commands one after another, or all at once."""
    t0 = time.perf_counter()
    if together:
        procs = [subprocess.Popen(c, env=e, cwd=HERE, stdout=subprocess.DEVNULL) for c, e in cmds]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(c, env=e, cwd=HERE, stdout=subprocess.DEVNULL).returncode for c, e in cmds]
    if any(codes):
        raise RuntimeError(f"{Path(cmds[0][0][1]).name} failed ({codes}); is MNIST in ./data?")
    return time.perf_counter() - t0


def _reproduce(preset, seeds, epochs, results_dir, *flags):
    cmd = [sys.executable, "reproduce.py", "--presets", preset, "--seeds", *map(str, seeds), "--epochs", str(epochs),
           "--quiet", "--results-dir", str(results_dir), *map(str, flags)]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    return cmd, env


def bench_sweep(presets, seeds=(1, 2, 3, 4, 5), epochs=2, rounds=2, extra=()):
    """Whole sweeps, wall time from the command's start to its exit, with real MNIST (./data): the
    seeds of a preset (EP + BPTT, the preset's flags, `epochs` epochs) as separate runs the best
    current way, `reproduce.py --workers 2 --threads-per-run 1`, against the same sweep as
    populations, `--stack`: two (one per worker, one thread each) or one (two threads); the three
    commands interleaved, `rounds` times, each into a fresh results dir."""
    variants = {"separate, --workers 2 --threads-per-run 1": ["--workers", 2, "--threads-per-run", 1],
                "--stack --workers 2 --threads-per-run 1": ["--stack", "--workers", 2, "--threads-per-run", 1],
                "--stack --workers 1 --threads-per-run 2": ["--stack", "--workers", 1, "--threads-per-run", 2]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            walls = {v: [] for v in variants}
            for r in range(rounds):
                for i, (v, flags) in enumerate(variants.items()):
                    cmd, env = _reproduce(preset, seeds, epochs, Path(tmp) / f"{preset}-round{r}-variant{i}", *flags, *extra)
                    walls[v].append(_wall([(cmd, env)], False))
                    print(f"{preset} round {r + 1}: {v}: {walls[v][-1]:.1f} s", flush=True)
            base = statistics.median(walls[next(iter(variants))])
            for v, w in walls.items():
                rows.append(dict(preset=preset, seeds=list(seeds), epochs=epochs, variant=v, wall_s=w,
                                 throughput_vs_separate=base / statistics.median(w)))
                print(f"{preset:6} {v:42} median {statistics.median(w):7.1f} s  throughput x{rows[-1]['throughput_vs_separate']:.2f}",
                      flush=True)
    return rows


def bench_process(copies=3):
    """Whole-process figures with real MNIST (./data): the start-up (a run on 20 images: imports, data,
    nets, folder, figure), and the busy-machine case: `copies` P-1h runs (12 000 images) started
    together against one after another, with main.py's default threads (its policy), 1 and 2."""
    with tempfile.TemporaryDirectory() as tmp:
        io = ["--results-dir", tmp]
        startup = min(_wall([_main_py("--train-subset", 20, "--test-subset", 20, *io)], False) for _ in range(3))
        out = dict(startup_s=startup, copies=copies)
        for label, threads in (("default_threads", None), ("one_thread", 1), ("two_threads", 2)):
            cmds = [_main_py("--train-subset", 12000, "--test-subset", 1000, *io, threads=threads)] * copies
            seq, par = _wall(cmds, False), _wall(cmds, True)
            out[label] = dict(one_after_another_s=seq, together_s=par, ratio=par / seq)
            print(f"{copies} P-1h runs (12 000 images), {label}: one after another {seq:.1f} s, together {par:.1f} s "
                  f"(ratio {par / seq:.2f})", flush=True)
    print(f"start-up (a run on 20 images, whole process): {startup:.2f} s", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device-label", type=int, default=-1)
    p.add_argument("--quick", action="store_true", help="reduced subset for CI smoke")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--settings", nargs="+", default=None, choices=sorted(SETTINGS))
    p.add_argument("--out", default="bench.json")
    p.add_argument("--baseline", action="store_true",
                   help="time the plain reference path (no fast stepper, drive recomputed each step): the 'before'")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--levers", action="store_true", help="only the levers table (P-1h, P-2h EP)")
    p.add_argument("--process", action="store_true",
                   help="only the whole-process figures: start-up and the busy-machine case (needs MNIST in ./data)")
    p.add_argument("--sweep", nargs="+", metavar="PRESET", default=None,
                   help="only whole sweeps (needs MNIST in ./data): 5 seeds, EP + BPTT, --epochs epochs, as separate runs "
                        "(reproduce.py --workers 2) against one population (--stack), interleaved, 2 rounds")
    p.add_argument("--epochs", type=int, default=2, help="--sweep: epochs of every run")
    p.add_argument("--population", type=int, nargs="+", metavar="M", default=None,
                   help="only the population table: ms per batch per member at population sizes M (e.g. 1 5 32) "
                        "against single runs, every Table-1 row (or --settings), EP and BPTT")
    a = p.parse_args(argv)
    if a.device_label >= 0 and not torch.cuda.is_available():
        print("bench.py: error: --device-label: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cpu" if a.device_label < 0 else f"cuda:{a.device_label}")
    if a.threads:
        torch.set_num_threads(a.threads)
    repeats = a.repeats or (2 if a.quick else 5)
    if a.levers:
        rows = bench_levers(device)
        with open(a.out + ".tmp", "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), levers=rows), f, indent=1)
        os.replace(a.out + ".tmp", a.out)
        return 0
    if a.population:
        print(f"ms per batch per member, threads {torch.get_num_threads()}, batch {B}, median of {repeats} rounds")
        print(f"{'setting':6} {'M':>4} {'EP pop':>9} {'EP single':>9} {'gain':>7} {'BPTT pop':>10} {'BPTT single':>10} "
              f"{'gain':>7}", flush=True)
        rows = bench_population(device, a.population, a.settings or POPULATION_SETTINGS, repeats)
        with open(a.out + ".tmp", "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(device),
                           population=rows, date=time.strftime("%Y-%m-%d %H:%M:%S")), f, indent=1)
        os.replace(a.out + ".tmp", a.out)
        return 0
    if a.sweep:
        rows = bench_sweep(a.sweep, epochs=a.epochs, rounds=a.repeats or 2)
        with open(a.out + ".tmp", "w") as f:
            json.dump(dict(torch=torch.__version__, cpus=os.cpu_count(), sweep=rows,
                           date=time.strftime("%Y-%m-%d %H:%M:%S")), f, indent=1)
        os.replace(a.out + ".tmp", a.out)
        return 0
    if a.process:
        res = bench_process()
        with open(a.out + ".tmp", "w") as f:
            json.dump(dict(torch=torch.__version__, cpus=os.cpu_count(), process=res), f, indent=1)
        os.replace(a.out + ".tmp", a.out)
        return 0
    todo = QUICK if a.quick else {k: None for k in (a.settings or SETTINGS)}
    limit = gemm_gflops(device, 512 if a.quick else 2048, 3 if a.quick else 10)
    small = gemm_small_gflops(device)
    rows = []
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fp32 GEMM {limit:.0f} GFLOP/s (2048^2), {small:.0f} GFLOP/s (20x512x512), best of torch.mm and oneDNN",
          flush=True)
    hdr = (f"{'setting':8} {'T':>5} {'K':>4} {'EP ms/b':>8} {'BPTT ms/b':>9} {'test s':>7} {'EP s/ep':>8} "
           f"{'BPTT s/ep':>9} {'EP GF/s':>8} {'%lim':>5} {'BPTT GF/s':>9} {'%lim':>5}")
    print(hdr, flush=True)
    for name, over in todo.items():
        r = bench_setting(name, device, repeats, over or None, a.baseline, 200 if a.quick else 1000)
        r["ep_frac_limit"], r["bptt_frac_limit"] = r["ep_gflops"] / limit, r["bptt_gflops"] / limit
        r["ep_floor_ms"] = 1e3 * r["ep_gflop_per_batch"] / limit
        r["ep_frac_b20"] = r["ep_gflops"] / small
        rows.append(r)
        print(f"{name:8} {r['T']:5d} {r['Kmax']:4d} {r['ep_ms']:8.2f} {r['bptt_ms']:9.2f} {r['test_s']:7.2f} "
              f"{r['ep_epoch_s']:8.1f} {r['bptt_epoch_s']:9.1f} {r['ep_gflops']:8.1f} "
              f"{100 * r['ep_frac_limit']:4.1f}% {r['bptt_gflops']:9.1f} {100 * r['bptt_frac_limit']:4.1f}%",
              flush=True)
    pc = bench_plotcurves(device, T=100 if a.quick else 500)
    print(f"plotcurves {pc['preset']} at T={pc['T']}: {pc['seconds']:.2f} s", flush=True)
    out = dict(machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                            cpus=os.cpu_count(), python=platform.python_version()),
               torch=torch.__version__, threads=torch.get_num_threads(), device=str(device),
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               quick=a.quick, baseline=a.baseline, repeats=repeats, gemm_gflops=limit, gemm_b20_gflops=small, settings=rows, plotcurves=pc,
               date=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(a.out + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
