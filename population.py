"""Populations: N runs of one fully connected net trained as one batched computation.

A single run of a small net (P-1h's step is a 20 x 512 x 10 product) is bound by the fixed cost of
each tensor operation, not by arithmetic.  A population stacks the parameters of N runs that share
the architecture, T and Kmax along a leading member dimension M, so that one torch.baddbmm does
the step of every member at once.  Members may differ only in what MAY_DIFFER lists (seed, lr_tab,
beta, nudging, the results directory).

    cfgs = [config.preset_config("P-1h", seed=s, training_method="EP") for s in (1, 2, 3)]
    outcomes = population.train_population(cfgs)       # one experiment.Outcome per member

Each member is exactly its single run (experiment.run with the same Config): the same initial
weights (the same seeding), the same data order (netFunctions.epoch_order(seed, epoch)), the same
equations, and the same result folder with the same files (results.json, checkpoint.pt,
config.json, hyperparameters.txt), so `python main.py --resume FOLDER` continues a member alone.
config.json also records the population.  With --benchmark each member also trains a BPTT copy
from the same initial weights (2M nets, in two stacks).  A member whose loss or weights become
NaN/inf is reported as its single run would report it and frozen; the others go on.

Supported: EPdisc (prototypical) and EPcont (energy-based, clamped or not), any depth, any
activation, one-sided, symmetric and random-sign nudging, EP and truncated BPTT, CPU or CUDA.
The conv net and the toy model are not (NotImplementedError / ValueError).
"""
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import experiment
import fastpath
import netFunctions as nf
import results as rs
from config import FIELDS, METHODS
from netClasses import build_net

# What may differ between the members of a population (explicit only records which flags were typed).
MAY_DIFFER = ("seed", "lr_tab", "beta", "nudging", "results_dir", "explicit")


def check_stackable(cfgs):
    """The members' Configs with the method's canonical spelling, if they can share one computation;
    else ValueError naming the field that differs (NotImplementedError for the conv net)."""
    if not cfgs:
        raise ValueError("a population needs at least one member")
    cfgs = [c.replace(training_method=METHODS.get(c.training_method, c.training_method)) for c in cfgs]
    first = cfgs[0]
    for name in FIELDS:
        if name in MAY_DIFFER:
            continue
        for i, c in enumerate(cfgs[1:], 1):
            if getattr(c, name) != getattr(first, name):
                raise ValueError(f"population members differ in {name} (member 0: {getattr(first, name)!r}, "
                                 f"member {i}: {getattr(c, name)!r}); only {', '.join(MAY_DIFFER[:5])} may differ")
    for i, c in enumerate(cfgs):
        if c.seed is None:
            raise ValueError(f"population member {i} has no seed (seed=None)")
        if len(c.lr_tab) != len(first.lr_tab):
            raise ValueError(f"population members differ in the length of lr_tab (member 0: {first.lr_tab}, "
                             f"member {i}: {c.lr_tab})")
    if first.resume:
        raise ValueError("a population starts new runs; continue a member with main.py --resume FOLDER")
    if first.kind == "conv":
        raise NotImplementedError("populations of the conv net (--C_tab) are not implemented (it would need "
                                  "grouped convolutions); train its runs one by one")
    if first.kind != "fc":
        raise ValueError("populations are for the fully connected nets (EPcont, EPdisc), not the toy model")
    return cfgs


# ------------------------------------------------------------------------------------------------
# The batched stepper

class StackedFC:
    """M fully connected nets (EPcont or EPdisc) of one architecture as one network with a leading
    member dimension: P = [W_0, b_0, W_1, b_1, ...], W_n (M, d_n, d_{n+1}), b_n (M, d_n); states
    s_n (M, B, d_n); inputs x (M, B, d_x) (each member its own batch) or (B, d_x) (shared).

    A faithful batched transcription of netClasses._LayeredFC (drive, pre, step), EPNet's EP
    update (computeGradients + updateWeights, in fastpath's fused two-phase form) and its truncated
    BPTT window (bptt_window: T - K free steps, then autograd through the last K transitions, as
    net.bptt_grads computes).  The layer equations themselves, phi and settle, are the template
    net's own methods.  tests/test_population.py holds every member to its single net (plain and
    fast paths) at 1e-12 in float64.

    The phases without autograd (free, nudged, evaluation, the start of the BPTT window) run on a
    batched transcription of fastpath's in-place, pre-scaled stepper (fast_context, fast_step);
    `step` (the plain form) runs the BPTT window under autograd.

    beta (M,), lr (M, L) and symmetric (M,) bool (symmetric nudging) are per member; a frozen
    member has lr 0 and zero weights."""

    def __init__(self, template, P, beta, lr, symmetric):
        self.net = template
        self.P = P
        self.beta, self.lr, self.symmetric = beta, lr, symmetric
        self.any_symmetric = bool(symmetric.any())
        self.keys = list(template.state_dict())  # layers.0.weight, layers.0.bias, ...: the order of P
        self.kern = fastpath.activation_kernels(template.act)

    @property
    def M(self):
        return self.P[0].shape[0]

    def initHidden(self, B):
        w = self.P[0]
        return [torch.zeros(self.M, B, d, dtype=w.dtype, device=w.device) for d in self.net.size_tab[:-1]]

    def drive(self, x, P):
        """phi(x) W_{N-1,x}^T + b_{N-1}: (M, B, d_{N-1})."""
        px = self.net.phi(x)
        if px.dim() == 2:
            px = px.expand(self.M, *px.shape)
        return torch.baddbmm(P[-1].unsqueeze(1), px, P[-2].transpose(1, 2))

    def pre(self, a, dx, P, n):
        """h_n = W_{n,n+1} a_{n+1} + b_n + W_{n-1,n}^T a_{n-1} (the last layer's bottom-up term is dx)."""
        N = self.net.ns
        h = dx if n == N - 1 else torch.baddbmm(P[2 * n + 1].unsqueeze(1), a[n + 1], P[2 * n].transpose(1, 2))
        if n > 0:
            h = torch.baddbmm(h, a[n - 1], P[2 * n - 2])
        return h

    def step(self, s, d, P, y=None, beta=None):
        """One synchronous step of every member; beta: None (free) or (M, 1, 1) (nudged)."""
        net = self.net
        a = [net.phi(t) for t in s]
        out = []
        for n in range(net.ns):
            g = net.settle(s[n], self.pre(a, d, P, n), n)
            if n == 0 and beta is not None:
                g = g + beta * (y - s[0])
            out.append(s[n] + (g if net.dt == 1.0 else net.dt * g))  # x * 1.0 == x exactly
        if net.clamp:
            out = [t.clamp(0.0, 1.0) for t in out]
        return out

    # --- the in-place stepper (no autograd) ------------------------------------------------------
    @torch.no_grad()
    def fast_context(self, x):
        """fastpath.layered_context, batched: the couplings pre-scaled by a = dt (EB) or the
        activation's scale (P), up[n] = (a W_n)^T (M, d_{n+1}, d_n) and down[n] = a W_n (M, d_n,
        d_{n+1}) as views whose transposes are contiguous, b[n] = a b_n (+ shift in P) (M, 1, d_n),
        the scaled input drive dx (M, B, d_{N-1}), and scratch r, rp for rho(s), rho'(s)."""
        net, P, kern = self.net, self.P, self.kern
        a, c = (net.dt, 0.0) if not net.prototypical else (kern.scale, kern.shift)
        W = [a * P[2 * n] for n in range(net.ns - 1)]
        b = [(a * P[2 * n + 1] + c).unsqueeze(1) for n in range(net.ns)]
        px = net.phi(x)
        if px.dim() == 2:
            px = px.expand(self.M, *px.shape)
        dx = torch.baddbmm(b[-1], px, P[-2].transpose(1, 2), alpha=a)
        r = self.initHidden(x.shape[-2])
        return FastContext([w.transpose(1, 2) for w in W], [w.transpose(1, 2).contiguous().transpose(1, 2) for w in W],
                           b, dx, r, [torch.empty_like(t) for t in r])

    def fast_step(self, s, ctx, out, y=None, beta=None):
        """fastpath.layered_step, batched: one step of every member written into the buffers out
        (never aliasing s); beta None (free) or (M, 1, 1)."""
        net, kern, N, dt = self.net, self.kern, self.net.ns, self.net.dt
        if net.prototypical:
            a = s
        else:  # neighbours are seen through rho; hidden layers need rho'(s) too
            a = [torch.mul(s[n], kern.scale, out=ctx.r[n]).add_(kern.shift) for n in range(N)]
            for n in range(N):
                kern.prim_(a[n])
                if n > 0:
                    kern.rhop_from_rho(s[n], a[n], ctx.rp[n])
        for n in range(N):
            u = out[n]
            if n == N - 1:
                torch.baddbmm(ctx.dx, a[n - 1], ctx.down[n - 1], out=u)
            else:
                torch.baddbmm(ctx.b[n], a[n + 1], ctx.up[n], out=u)
                if n > 0:
                    u.baddbmm_(a[n - 1], ctx.down[n - 1])
            if net.prototypical:  # s + dt (-s + rho(h)), h already in the scaled space
                kern.prim_(u)
                if dt != 1.0:
                    u.mul_(dt).add_(s[n], alpha=1.0 - dt)
            else:  # s + dt (-s + rho'(s) h), dt already folded into W and b
                if n > 0:
                    u.mul_(ctx.rp[n])
                u.add_(s[n], alpha=1.0 - dt)
        if beta is not None:
            out[0].addcmul_(y - s[0], beta * dt)
        if net.clamp:
            for t in out:
                t.clamp_(0.0, 1.0)
        return out

    @torch.no_grad()
    def fast_steps(self, s, ctx, steps, y=None, beta=None):
        """`steps` in-place steps from s (never modified), alternating two new buffers."""
        bufs = ([torch.empty_like(t) for t in s], [torch.empty_like(t) for t in s])
        for k in range(steps):
            s = self.fast_step(s, ctx, bufs[k % 2], y, beta)
        return s

    # --- the phases -----------------------------------------------------------------------------
    def run_steps(self, s, d, P, steps, y=None, beta=None):
        for _ in range(steps):
            s = self.step(s, d, P, y, beta)
        return s

    @torch.no_grad()
    def free_phase(self, x, T=None, ctx=None):
        """T (default net.T) free steps from zero: s(T)."""
        ctx = self.fast_context(x) if ctx is None else ctx
        return self.fast_steps(self.initHidden(x.shape[-2]), ctx, self.net.T if T is None else T)

    @torch.no_grad()
    def ep_batch(self, x, y, sign=None):
        """One EP update of every member (netFunctions.ep_batch): T free steps, Kmax nudged steps
        with beta * sign (sign (M,) +-1, random-sign nudging; None = all +1), and for symmetric
        members a second phase with -beta and the update over 2 beta.  Returns s_0 of the free phase."""
        K, ctx = self.net.Kmax, self.fast_context(x)
        seq = self.free_phase(x, ctx=ctx)
        beta = self.beta if sign is None else self.beta * sign
        s = self.fast_steps(seq, ctx, K, y, beta.view(-1, 1, 1))
        ref = seq
        if self.any_symmetric:
            s_minus = self.fast_steps(seq, ctx, K, y, -self.beta.view(-1, 1, 1))
            sym = self.symmetric.view(-1, 1, 1)
            ref = [torch.where(sym, a, b) for a, b in zip(s_minus, seq)]
            beta = torch.where(self.symmetric, 2 * self.beta, beta)
        self.ep_update(beta, x, s, ref)
        return seq[0]

    @torch.no_grad()
    def ep_update(self, beta, x, s, ref):
        """theta_n += lr_n / (beta B) [dPhi/dtheta_n(s) - dPhi/dtheta_n(ref)] per member; the hidden
        couplings as one product of the stacked phases, the input weights through (a^s - a^ref)."""
        net, B = self.net, s[0].shape[1]
        k = self.lr / (beta.unsqueeze(1) * B)  # (M, L)
        ps, pr = [net.phi(t) for t in s], [net.phi(t) for t in ref]
        px = net.phi(x)
        for n in range(net.ns):
            kn = k[:, n].view(-1, 1, 1)
            if n + 1 < net.ns:
                left = torch.cat([ps[n], -pr[n]], 1).mul_(kn)  # (M, 2B, d_n)
                self.P[2 * n].baddbmm_(left.transpose(1, 2), torch.cat([ps[n + 1], pr[n + 1]], 1))
                self.P[2 * n + 1].add_(left.sum(1))
            else:
                da = (ps[n] - pr[n]).mul_(kn)
                self.P[2 * n].add_(da.transpose(1, 2) @ px)  # px (B, d_x) or (M, B, d_x)
                self.P[2 * n + 1].add_(da.sum(1))

    def bptt_grads(self, x, y):
        """Truncated BPTT of every member through the last Kmax transitions (EPNet.bptt_window):
        autograd of the sum of the members' losses, which gives each member its own gradients.
        Returns (s_0(T), grads aligned with P)."""
        K = self.net.Kmax
        s = self.free_phase(x, T=self.net.T - K)
        with torch.enable_grad():
            P = [p.detach().requires_grad_() for p in self.P]
            s = self.run_steps(s, self.drive(x, P), P, K)
            L = 0.5 * ((s[0] - y) ** 2).sum() / y.shape[1]
            grads = torch.autograd.grad(L, P, materialize_grads=True)
        return s[0].detach(), list(grads)

    @torch.no_grad()
    def bptt_batch(self, x, y):
        """One truncated-BPTT SGD step of every member (netFunctions.bptt_batch).  Returns s_0(T)."""
        s0, grads = self.bptt_grads(x, y)
        for i, g in enumerate(grads):
            lr = self.lr[:, i // 2]
            self.P[i].sub_(g * lr.view(-1, *[1] * (g.dim() - 1)))
        return s0

    @torch.no_grad()
    def freeze(self, m):
        """Member m stops: zero weights (finite states from now on) and learning rates 0."""
        for p in self.P:
            p[m].zero_()
        self.lr[m] = 0.0

    def finite(self):
        """(M,) bool: the member's weights are all finite."""
        return torch.stack([torch.isfinite(p).flatten(1).all(1) for p in self.P]).all(0)


@dataclass
class FastContext:
    """What stays fixed during a batch on the in-place stepper (StackedFC.fast_context)."""
    up: list
    down: list
    b: list
    dx: torch.Tensor
    r: list
    rp: list


@dataclass
class MemberWeights:
    """One member's weights in its single net's state_dict form (same keys and shapes), for
    results.save_checkpoint."""
    stack: StackedFC
    m: int

    def state_dict(self):
        return {k: p[self.m].detach().clone() for k, p in zip(self.stack.keys, self.stack.P)}


# ------------------------------------------------------------------------------------------------
# The population

def member_net(cfg, dtype, device):
    """The member's net with its single run's initial weights (the seeding of experiment.run)."""
    nf.set_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return build_net(cfg).to(device=device, dtype=dtype)


def stack_nets(nets, cfgs):
    """A StackedFC of copies of the nets' parameters, with the members' beta, lr and nudging."""
    w = nets[0].layers[0].weight
    P = [torch.stack([p.detach() for p in ps]) for ps in zip(*(n.param_list() for n in nets))]
    beta = torch.tensor([c.beta for c in cfgs], dtype=w.dtype, device=w.device)
    lr = torch.tensor([c.lr_tab for c in cfgs], dtype=w.dtype, device=w.device)
    symmetric = torch.tensor([c.nudging == "symmetric" for c in cfgs], device=w.device)
    return StackedFC(nets[0], P, beta, lr, symmetric)


@dataclass
class Run:
    """One training method's stack: method EP or BPTT, suffix of its results keys ('' or '_bptt')."""
    method: str
    stack: StackedFC
    suffix: str


class Population:
    """M runs of one fully connected architecture (check_stackable), built exactly as their single
    runs build them, then stacked: runs[0] trains with the training method, and with --benchmark
    runs[1] is the BPTT copy from the same initial weights."""

    def __init__(self, cfgs, dtype=torch.float32, device=None):
        self.cfgs = check_stackable(cfgs)
        first = self.cfgs[0]
        if device is None:
            device = torch.device("cpu" if first.device_label < 0 else f"cuda:{first.device_label}")
        nets = [member_net(c, dtype, device) for c in self.cfgs]
        self.titles = [experiment.describe(c, n) for c, n in zip(self.cfgs, nets)]
        self.runs = [Run(first.training_method, stack_nets(nets, self.cfgs), "")]
        if first.benchmark:
            self.runs.append(Run("BPTT", stack_nets(nets, self.cfgs), "_bptt"))
        self.device = device

    @property
    def M(self):
        return len(self.cfgs)

    def freeze(self, m):
        for r in self.runs:
            r.stack.freeze(m)


# ------------------------------------------------------------------------------------------------
# Training: an epoch of every member, evaluation

@dataclass
class EpochStats:
    """One method's epoch for every member: train error %, mean batch loss, and the divergence
    message of each member that diverged in it (None for the others)."""
    err: list
    loss: list
    diverged: list
    seconds: float = 0.0


def member_batches(cfgs, n, epoch, dtype, device):
    """Each member's data order (M, n) and nudging signs (M, nb) for the epoch, as its single run
    draws them (epoch_order, nudge_signs)."""
    B = cfgs[0].batch_size
    nb = (n + B - 1) // B
    perms = torch.stack([nf.epoch_order(n, c.seed, epoch) for c in cfgs]).to(device)
    signs = [nf.nudge_signs(c.seed, epoch, nb) if c.nudging == "random-sign" else [1] * nb for c in cfgs]
    return perms, torch.tensor(signs, dtype=dtype, device=device), nb


def train_epoch(run, cfgs, X, Y, epoch, frozen):
    """One epoch of online SGD of every member (netFunctions.train): the prediction of each batch
    is made before its update.  A member whose loss turns NaN/inf is frozen at once; weights that
    are NaN/inf at the end of the epoch are reported too.  frozen: the members frozen before."""
    t0 = time.perf_counter()
    stack, M, B = run.stack, len(cfgs), cfgs[0].batch_size
    perms, signs, nb = member_batches(cfgs, X.shape[0], epoch, stack.P[0].dtype, X.device)
    wrong = torch.zeros(M, dtype=torch.long, device=X.device)
    loss_sum, diverged = [0.0] * M, [None] * M
    for i in range(nb):
        idx = perms[:, i * B:(i + 1) * B]
        x, y = X[idx], Y[idx]
        s0 = stack.ep_batch(x, y, signs[:, i]) if run.method == "EP" else stack.bptt_batch(x, y)
        losses = (0.5 * ((s0 - y) ** 2).sum((1, 2))).tolist()
        wrong += (s0.argmax(2) != y.argmax(2)).sum(1)
        for m, sq in enumerate(losses):
            loss = sq / y.shape[1]
            if m in frozen or diverged[m]:
                continue
            if not math.isfinite(loss):
                diverged[m] = f"diverged: epoch {epoch}, batch {i + 1}, method {run.method} (state is NaN/inf)"
                stack.freeze(m)
                continue
            loss_sum[m] += loss
    for m, ok in enumerate(stack.finite().tolist()):
        if not ok and m not in frozen and not diverged[m]:
            diverged[m] = f"diverged: epoch {epoch}, batch {nb}, method {run.method} (weights are NaN/inf)"
            stack.freeze(m)
    seen = X.shape[0]
    return EpochStats([100.0 * w / seen for w in wrong.tolist()], [s / nb for s in loss_sum], diverged,
                      time.perf_counter() - t0)


@torch.no_grad()
def evaluate(stack, X, Y, batch_size):
    """Test error % of every member (netFunctions.evaluate): T free steps on the shared test set."""
    wrong = torch.zeros(stack.M, dtype=torch.long, device=X.device)
    for i in range(0, X.shape[0], batch_size):
        x, y = X[i:i + batch_size], Y[i:i + batch_size]
        wrong += (stack.free_phase(x)[0].argmax(2) != y.argmax(1)).sum(1)
    return [100.0 * w / X.shape[0] for w in wrong.tolist()]


# ------------------------------------------------------------------------------------------------
# Result folders: each member's, as its single run writes them

def population_record(cfgs, m, folders):
    return dict(size=len(cfgs), index=m, members=[c.seed for c in cfgs], folders=[str(f) for f in folders])


def write_member_config(path, cfg, device, population, argv=None):
    """config.json of a member: its single run's record plus the population it was trained in."""
    rec = rs.config_record(cfg, device, sys.argv if argv is None else argv)
    rec["population"] = population
    rs.write_json(Path(path) / "config.json", rec)


def initial_results(cfg, name, title, suffixes):
    """A member's results.json before its first epoch (experiment.train_action's)."""
    res = dict(action="train", model=name, title=title, method=cfg.training_method, seed=cfg.seed,
               epochs_done=0, elapsed_time=0.0)
    for sfx in suffixes:
        for k in ("error_train_tab", "error_test_tab", "loss_tab", "seconds_tab"):
            res[k.replace("_tab", sfx + "_tab")] = []
    return res


def make_folders(pop, argv=None):
    """Every member's result folder with hyperparameters.txt, config.json and its initial results."""
    made = [rs.createPath(c, c.results_dir) for c in pop.cfgs]
    folders = [p for p, _ in made]
    results = []
    for m, (c, (path, name)) in enumerate(zip(pop.cfgs, made)):
        rs.createHyperparameterfile(path, name, c)
        write_member_config(path, c, pop.device, population_record(pop.cfgs, m, folders), argv)
        results.append(initial_results(c, name, pop.titles[m], [r.suffix for r in pop.runs]))
    return folders, results


@dataclass
class Progress:
    """The trainer's bookkeeping: each member's results dict, and the members that stopped."""
    folders: list
    results: list
    stopped: set = field(default_factory=set)


def record_epoch(pop, run, stats, test, progress, evaluation_s, log):
    """Append one method's epoch to each running member's results (a diverged member gets its
    message, its results.json is written, and the whole member stops, as its single run stops)."""
    share = (stats.seconds + evaluation_s) / pop.M  # the members share the computation's wall time
    for m, res in enumerate(progress.results):
        if m in progress.stopped:
            continue
        if stats.diverged[m]:
            res["diverged"] = stats.diverged[m]
            rs.write_json(progress.folders[m] / "results.json", res)
            progress.stopped.add(m)
            pop.freeze(m)
            log(f"member {m} (seed {pop.cfgs[m].seed}): {stats.diverged[m]}; it stops, the others go on")
            continue
        for k, v in (("error_train_tab", stats.err[m]), ("error_test_tab", test[m]), ("loss_tab", stats.loss[m]),
                     ("seconds_tab", share)):
            res[k.replace("_tab", run.suffix + "_tab")].append(v)
        res["elapsed_time"] += share


def save_epoch(pop, epoch, progress):
    """checkpoint.pt and results.json of every member still running (the checkpoint first, as a
    single run writes them)."""
    for m, res in enumerate(progress.results):
        if m in progress.stopped:
            continue
        res["epochs_done"] = epoch
        nets = [MemberWeights(r.stack, m) for r in pop.runs]
        rs.save_checkpoint(progress.folders[m] / "checkpoint.pt", epoch, nets[0], nets[1] if len(nets) > 1 else None,
                           res)
        rs.write_json(progress.folders[m] / "results.json", res)


def log_epoch(pop, epoch, run, stats, test, stopped, log):
    alive = [m for m in range(pop.M) if m not in stopped]
    if not alive:
        return
    errs = "  ".join(f"{test[m]:5.2f}" for m in alive)
    log(f"epoch {epoch}/{pop.cfgs[0].epochs} {run.method:>4}: {len(alive)} members, mean train error "
        f"{sum(stats.err[m] for m in alive) / len(alive):6.2f}%, test errors % {errs}  ({stats.seconds:.1f} s)",
        flush=True)


def load_data(cfg, log):
    import mnist
    device = torch.device("cpu" if cfg.device_label < 0 else f"cuda:{cfg.device_label}")
    try:
        Xtr, Ytr = mnist.load_mnist(cfg.data_dir, True, cfg.train_subset, True, device, log=log)
        Xte, Yte = mnist.load_mnist(cfg.data_dir, False, cfg.test_subset, True, device, log=log)
    except mnist.DataError as e:
        raise experiment.UsageError(str(e))
    return Xtr, Ytr, Xte, Yte


def prepare(cfgs):
    """Each member validated as its single run validates it, with a seed drawn where it has none
    (as experiment.run draws one)."""
    cfgs = [experiment.validate(c) for c in cfgs]
    cfgs = [c if c.seed is not None else c.replace(seed=random.SystemRandom().randrange(2**31)) for c in cfgs]
    check_stackable(cfgs)
    if cfgs[0].action != "train":
        raise ValueError(f"a population trains (action train), not --action {cfgs[0].action}")
    return cfgs


def train_population(cfgs, log=print, argv=None, figures=True):
    """Train the members of a population, epoch by epoch, as one computation; each member's folder
    gets its single run's files after every epoch.  Returns one experiment.Outcome per member
    (code 3 and the message for a member that diverged)."""
    cfgs = prepare(cfgs)
    chatter = (lambda *a, **k: None) if cfgs[0].quiet else log
    threads = experiment.thread_count(cfgs[0])
    if threads:
        torch.set_num_threads(threads)
    Xtr, Ytr, Xte, Yte = load_data(cfgs[0], chatter)
    pop = Population(cfgs)
    progress = Progress(*make_folders(pop, argv))
    log(f"population of {pop.M} (seeds {', '.join(str(c.seed) for c in pop.cfgs)}): results in "
        + ", ".join(str(f) for f in progress.folders), flush=True)
    for epoch in range(1, pop.cfgs[0].epochs + 1):
        for run in pop.runs:
            stats = train_epoch(run, pop.cfgs, Xtr, Ytr, epoch, progress.stopped)
            t0 = time.perf_counter()
            test = evaluate(run.stack, Xte, Yte, pop.cfgs[0].test_batch_size)
            record_epoch(pop, run, stats, test, progress, time.perf_counter() - t0, log)
            log_epoch(pop, epoch, run, stats, test, progress.stopped, chatter)
        save_epoch(pop, epoch, progress)
    if figures:
        for f in progress.folders:
            render(f, chatter, log)
    return [experiment.Outcome(f, 3 if "diverged" in r else 0, r, r.get("diverged", ""))
            for f, r in zip(progress.folders, progress.results)]


def render(folder, chatter, log):
    """A member's figures, as a single training run draws them (a failure is only a warning)."""
    import plotFunctions
    try:
        written = plotFunctions.render(folder)
        chatter("figures: " + ", ".join(Path(w).name for w in written))
    except Exception as e:
        log(f"warning: figures not rendered in {folder} ({' '.join(str(e).split()) or type(e).__name__})")
