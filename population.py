"""Populations: M runs of one net trained as one batched computation.

A single run of a small net (P-1h's step is a 20 x 512 x 10 product) is largely bound by the fixed
cost of each tensor operation (on a GPU entirely; on a CPU the 784 x 512 input products are real
arithmetic, and stay so: see `python bench.py --population 1 5 32`).  A population stacks the parameters of M
runs that share the architecture, T and Kmax along a leading member dimension, so that one
torch.baddbmm (one grouped convolution, for the conv net) does the step of every member at once.  Members may differ only in what MAY_DIFFER
lists (seed, lr_tab, beta, nudging, the results directory).

    cfgs = [config.preset_config("P-1h", seed=s, training_method="EP") for s in (1, 2, 3)]
    outcomes = population.train_population(cfgs)       # one experiment.Outcome per member

Each member is its single run (experiment.run with the same Config) to round-off: the same initial
weights (the same seeding), the same data order (netFunctions.epoch_order(seed, epoch)), the same
equations, and the same result folder with the same files (results.json, checkpoint.pt,
config.json, hyperparameters.txt), so `python main.py --resume FOLDER` continues a member alone.
config.json also records the population.  With --benchmark each member also trains a BPTT copy
from the same initial weights (2M nets, in two stacks).  A member whose loss or weights become
NaN/inf is reported as its single run would report it and frozen; the others go on.

Supported: EPdisc (prototypical) and EPcont (energy-based, clamped or not), any depth, any
activation (StackedFC: the speed layer's equations written out batched), and convEP (StackedConv:
torch.func.vmap over netClasses' own equations); one-sided, symmetric and random-sign nudging, EP
and truncated BPTT, on the device of --device-label (tested on the CPU).  Not the toy model.
"""
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.func import vmap

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
    else ValueError naming the field that differs."""
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
    if first.kind not in ("fc", "conv"):
        raise ValueError("populations are for EPcont, EPdisc and convEP, not the toy model")
    return cfgs


# ------------------------------------------------------------------------------------------------
# The batched steppers

class Stack:
    """What the two batched steppers share: the stacked parameters P (P[i] (M, *shape of the single
    net's P[i])), the members' beta (M,), lr (M, L) and symmetric (M,) bool, the EP batch (free
    phase, nudged phase(s), update: netFunctions.ep_batch for every member), and freezing.  A frozen
    member has lr 0 and zero weights.  A subclass defines initHidden, context, run_steps (beta None:
    free; (M,): nudged), ep_update, bptt_grads, bptt_batch and `width`."""

    def __init__(self, template, P, beta, lr, symmetric):
        self.net = template  # its hyperparameters (T, Kmax, dt, clamp, sizes) and its equations
        self.P = P
        self.beta, self.lr, self.symmetric = beta, lr, symmetric
        self.any_symmetric = bool(symmetric.any())
        self.keys = list(template.state_dict())  # layers.0.weight, layers.0.bias, ...: the order of P

    @property
    def M(self):
        return self.P[0].shape[0]

    def members(self, lo, hi):
        """Members lo..hi-1 as a stack of the same kind on views of this one's tensors."""
        return type(self)(self.net, [p[lo:hi] for p in self.P], self.beta[lo:hi], self.lr[lo:hi],
                          self.symmetric[lo:hi])

    @torch.no_grad()
    def free_phase(self, x, T=None, ctx=None):
        """T (default net.T) free steps from zero: s(T).  x: (M, B, ...) or (B, ...) shared."""
        ctx = self.context(x) if ctx is None else ctx
        return self.run_steps(self.initHidden(x.shape[-1 - self.x_dims]), ctx, self.net.T if T is None else T)

    @torch.no_grad()
    def ep_batch(self, x, y, sign=None):
        """One EP update of every member (netFunctions.ep_batch): T free steps, Kmax nudged steps
        with beta * sign (sign (M,) +-1, random-sign nudging; None = all +1), and for symmetric
        members a second phase with -beta and the update over 2 beta.  Returns s_0 of the free phase."""
        K, ctx = self.net.Kmax, self.context(x)
        seq = self.free_phase(x, ctx=ctx)
        beta = self.beta if sign is None else self.beta * sign
        s = self.run_steps(seq, ctx, K, y, beta)
        ref = seq
        if self.any_symmetric:
            s_minus = self.run_steps(seq, ctx, K, y, -self.beta)
            ref = [torch.where(self.symmetric.view(-1, *(1,) * (a.dim() - 1)), a, b) for a, b in zip(s_minus, seq)]
            beta = torch.where(self.symmetric, 2 * self.beta, beta)
        self.ep_update(beta, x, s, ref)
        return seq[0]

    # --- divergence -----------------------------------------------------------------------------
    @torch.no_grad()
    def freeze(self, m):
        """Member m stops: zero weights (finite states from now on) and learning rates 0."""
        for p in self.P:
            p[m].zero_()
        self.lr[m] = 0.0

    def finite(self):
        """(M,) bool: the member's weights are all finite."""
        return torch.stack([torch.isfinite(p).flatten(1).all(1) for p in self.P]).all(0)


class StackedFC(Stack):
    """M fully connected nets (EPcont or EPdisc) of one architecture as one network with a leading
    member dimension: P = [W_0, b_0, W_1, b_1, ...], W_n (M, d_n, d_{n+1}), b_n (M, d_n); states
    s_n (M, B, d_n); inputs x (M, B, d_x) (each member its own batch) or (B, d_x) (shared).

    A faithful batched transcription of the speed layer's form of netClasses' equations
    (fastpath.layered_context and layered_step: the couplings pre-scaled once per batch, so that
    rho(h) is prim(u) of a scaled pre-activation u), of EPNet's EP update (fastpath's fused
    two-phase form of computeGradients + updateWeights) and of its truncated BPTT window
    (EPNet.bptt_window, what net.bptt_grads computes: T - Kmax free steps, then autograd through
    the last Kmax transitions).  The step is written out of place, so that autograd runs through
    it.  tests/test_population.py holds every member to its single net, on the plain and the fast
    path, in float64: free states, BPTT gradients and weights at 1e-12, EP updates at 1e-12 or, where
    an update is a small difference of large Hebbian terms, as closely as those two paths agree.

    beta (M,), lr (M, L) and symmetric (M,) bool (symmetric nudging) are per member; a frozen
    member has lr 0 and zero weights."""

    x_dims = 1  # an example is a vector

    def __init__(self, template, P, beta, lr, symmetric):
        super().__init__(template, P, beta, lr, symmetric)
        self.kern = fastpath.activation_kernels(template.act)

    @property
    def width(self):
        """The most numbers a state layer holds per example (evaluate's chunks)."""
        return max(self.net.size_tab[:-1])

    @property
    def scale(self):
        """a: the factor of the pre-scaled couplings, dt in EB, the activation's scale in P."""
        return self.kern.scale if self.net.prototypical else self.net.dt

    def initHidden(self, B):
        w = self.P[0]
        return [torch.zeros(self.M, B, d, dtype=w.dtype, device=w.device) for d in self.net.size_tab[:-1]]

    def context(self, x):
        """What stays fixed during a batch: the hidden couplings a W_n, the biases a b_n (+ the
        activation's shift in P), (M, 1, d_n), and the scaled input drive
        dx = a (phi(x) W_{N-1,x}^T + b_{N-1}) (+ shift), (M, B, d_{N-1})."""
        net, P, a = self.net, self.P, self.scale
        c = self.kern.shift if net.prototypical else 0.0
        b = [(a * P[2 * n + 1] + c).unsqueeze(1) for n in range(net.ns)]
        dx = torch.baddbmm(b[-1], self.phi_x(x), P[-2].transpose(1, 2), alpha=a)
        return Context.of([a * P[2 * n] for n in range(net.ns - 1)], b, dx)

    def phi_x(self, x):
        px = self.net.phi(x)
        return px.expand(self.M, *px.shape) if px.dim() == 2 else px

    def rho_rhop(self, s):
        """EB: rho(s_n) and rho'(s_n); without autograd rho' comes from rho (the speed layer's kernel)."""
        r = [self.net.rho(t) for t in s]
        if torch.is_grad_enabled():
            return r, [self.net.rhop(t) for t in s]
        return r, [self.kern.rhop_from_rho(t, a, torch.empty_like(a)) for t, a in zip(s, r)]

    def step(self, s, ctx, y=None, beta=None):
        """One synchronous step of every member (fastpath.layered_step, batched, out of place);
        beta: None (free) or (M,) (nudged)."""
        net, N, dt = self.net, self.net.ns, self.net.dt
        a, rp = (s, None) if net.prototypical else self.rho_rhop(s)
        out = []
        for n in range(N):  # u = a h_n (+ shift in P)
            if n == N - 1:
                u = torch.baddbmm(ctx.dx, a[n - 1], ctx.down[n - 1])
            else:
                u = torch.baddbmm(ctx.b[n], a[n + 1], ctx.up[n])
                if n > 0:
                    u = u.baddbmm_(a[n - 1], ctx.down[n - 1])  # in place on a new tensor: autograd-safe
            if net.prototypical:  # s + dt (-s + rho(h))
                u = self.kern.prim_(u)
                if dt != 1.0:
                    u = torch.add(u * dt, s[n], alpha=1.0 - dt)
            else:  # s + dt (-s + rho'(s) h) (the output layer without rho'), dt h already in u
                u = torch.add(u if n == 0 else u * rp[n], s[n], alpha=1.0 - dt)
            out.append(u)
        if beta is not None:
            out[0] = out[0] + (y - s[0]) * (beta.view(-1, 1, 1) * dt)
        if net.clamp:
            out = [t.clamp(0.0, 1.0) for t in out]
        return out

    def run_steps(self, s, ctx, steps, y=None, beta=None):
        for _ in range(steps):
            s = self.step(s, ctx, y, beta)
        return s

    # --- EP -------------------------------------------------------------------------------------
    @torch.no_grad()
    def ep_update(self, beta, x, s, ref):
        """theta_n += lr_n / (beta B) [dPhi/dtheta_n(s) - dPhi/dtheta_n(ref)] per member; the hidden
        couplings as one product of the stacked phases, the input weights through (a^s - a^ref)."""
        net, B = self.net, s[0].shape[1]
        k = self.lr / (beta.unsqueeze(1) * B)  # (M, L)
        ps, pr = [net.phi(t) for t in s], [net.phi(t) for t in ref]
        for n in range(net.ns):
            kn = k[:, n].view(-1, 1, 1)
            if n + 1 < net.ns:
                left = torch.cat([ps[n], -pr[n]], 1).mul_(kn)  # (M, 2B, d_n)
                self.P[2 * n].baddbmm_(left.transpose(1, 2), torch.cat([ps[n + 1], pr[n + 1]], 1))
                self.P[2 * n + 1].add_(left.sum(1))
            else:
                da = (ps[n] - pr[n]).mul_(kn)
                self.P[2 * n].baddbmm_(da.transpose(1, 2), self.phi_x(x))
                self.P[2 * n + 1].add_(da.sum(1))

    # --- truncated BPTT -------------------------------------------------------------------------
    def bptt_window(self, x, y):
        """T - Kmax free steps, then autograd through the last Kmax transitions of every member
        (the sum of the members' losses gives each member its own gradients).  The gradients are
        taken w.r.t. the batch's pre-scaled context, a leaf per tensor: the input drive dx is one,
        so the input weights' gradient is one product with phi(x) (see to_param_grads).
        Returns (s_0(T), dL/d(a W_n), dL/d(b[n]) for n < N-1, dL/ddx)."""
        K = self.net.Kmax
        with torch.no_grad():
            ctx = self.context(x)
            s = self.run_steps(self.initHidden(x.shape[-2]), ctx, self.net.T - K)
        with torch.enable_grad():
            W = [w.detach().requires_grad_() for w in ctx.W]
            b = [t.detach().requires_grad_() for t in ctx.b[:-1]]
            dx = ctx.dx.detach().requires_grad_()
            s = self.run_steps(s, Context.of(W, b + [None], dx), K)
            L = 0.5 * ((s[0] - y) ** 2).sum() / y.shape[1]
            g = torch.autograd.grad(L, W + b + [dx], materialize_grads=True)
        nW = len(W)
        return s[0].detach(), list(g[:nW]), list(g[nW:2 * nW]), g[-1]

    def bptt_grads(self, x, y):
        """(s_0(T), gradients aligned with P): what net.bptt_grads returns, for every member."""
        s0, gW, gb, gdx = self.bptt_window(x, y)
        a = self.scale
        grads = []
        for n in range(len(gW)):
            grads += [a * gW[n], a * gb[n].squeeze(1)]
        grads += [a * (gdx.transpose(1, 2) @ self.phi_x(x)), a * gdx.sum(1)]
        return s0, grads

    @torch.no_grad()
    def bptt_batch(self, x, y):
        """One truncated-BPTT SGD step of every member (netFunctions.bptt_batch), the input weights'
        gradient and update fused into one product.  Returns s_0(T)."""
        s0, gW, gb, gdx = self.bptt_window(x, y)
        k = -self.scale * self.lr  # (M, L)
        for n in range(len(gW)):
            self.P[2 * n].add_(gW[n].mul_(k[:, n].view(-1, 1, 1)))
            self.P[2 * n + 1].add_(gb[n].squeeze(1).mul_(k[:, n].view(-1, 1)))
        G = gdx.mul_(k[:, -1].view(-1, 1, 1))
        self.P[-2].baddbmm_(G.transpose(1, 2), self.phi_x(x))
        self.P[-1].add_(G.sum(1))
        return s0

@dataclass
class Context:
    """What stays fixed during a batch (StackedFC.context): the pre-scaled couplings W[n] (M, d_n,
    d_{n+1}) with their two views, up[n] = W[n]^T for h_n += a_{n+1} up[n] and down[n] = W[n] laid
    out so that its transpose is contiguous, for h_{n+1} += a_n down[n] (the a @ M^T form that
    fastpath found fastest); the biases b[n] (M, 1, d_n); the input drive dx (M, B, d_{N-1})."""
    W: list
    up: list
    down: list
    b: list
    dx: torch.Tensor

    @classmethod
    def of(cls, W, b, dx):
        return cls(W, [w.transpose(1, 2) for w in W], [w.transpose(1, 2).contiguous().transpose(1, 2) for w in W],
                   b, dx)


def vmapped(fn, in_dims=0):
    """torch.func.vmap(fn), without torch's warning that max_unpool2d has no batching rule (vmap then
    loops over the members for that one operation, a small part of the conv net's step)."""
    batched = vmap(fn, in_dims=in_dims)

    def call(*args):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*batching rule for aten::max_unpool2d")
            return batched(*args)
    return call


class StackedConv(Stack):
    """M conv nets (convEP) of one architecture: torch.func.vmap over convEP's own drive, step and
    hebbian, so that the equations are netClasses' (convEP has no speed layer: its single run is
    that plain path too) and each convolution of the M members runs as one grouped convolution.
    States s_n (M, B, ...) with, after them, the pooling indices (M, B, C, p, p); x (M, B, 1, 28, 28)
    (each member its batch) or (B, 1, 28, 28) (shared, the test set).  BPTT: autograd through the
    vmapped window, as the single run's plain path does (PlainPath.bptt_grads)."""

    x_dims = 3  # an example is an image (C, H, W)

    @property
    def width(self):
        """The most numbers a layer holds per example: a conv layer's output before pooling."""
        net = self.net
        return max([max(net.size_tab)] + [c * h * h for c, h in zip(net.C_tab, net.conv_out)])

    def x_in(self, x):
        """vmap's in_dim of the input: per member (0) or shared (None)."""
        return 0 if x.dim() == 2 + self.x_dims else None

    def initHidden(self, B):
        return [t.expand(self.M, *t.shape).clone() for t in self.net.initHidden(B)]

    def context(self, x, P=None):
        """The bottom conv layer's pooled input and its pooling indices, per member (convEP.drive)."""
        return vmapped(self.net.drive, in_dims=(self.x_in(x), 0))(x, self.P if P is None else P)

    def run_steps(self, s, ctx, steps, y=None, beta=None, P=None):
        """`steps` synchronous steps of every member (convEP.step); beta None (free) or (M,) (nudged).
        The batched step is made once per call, not once per step."""
        P = self.P if P is None else P
        if beta is None:
            free = vmapped(lambda s, d, P: self.net.step(s, d, P))
            for _ in range(steps):
                s = free(s, ctx, P)
            return s
        nudged = vmapped(self.net.step)
        for _ in range(steps):
            s = nudged(s, ctx, P, y, beta)
        return s

    @torch.no_grad()
    def ep_update(self, beta, x, s, ref):
        """theta += lr / (beta B) [dPhi/dtheta(s) - dPhi/dtheta(ref)] per member (convEP.hebbian)."""
        B, hebbian = s[0].shape[1], vmapped(self.net.hebbian, in_dims=(self.x_in(x), 0))
        k = self.lr / (beta.unsqueeze(1) * B)  # (M, L)
        for i, (p, a, b) in enumerate(zip(self.P, hebbian(x, s), hebbian(x, ref))):
            p.add_((a - b).mul_(k[:, i // 2].view(-1, *(1,) * (p.dim() - 1))))

    def bptt_grads(self, x, y):
        """(s_0(T), gradients aligned with P): T - Kmax free steps, then autograd through the last
        Kmax transitions (the sum of the members' losses gives each member its own gradients)."""
        K = self.net.Kmax
        with torch.no_grad():
            s = self.free_phase(x, T=self.net.T - K)
        with torch.enable_grad():
            P = [p.detach().requires_grad_() for p in self.P]
            s = self.run_steps(s, self.context(x, P), K, P=P)
            L = 0.5 * ((s[0] - y) ** 2).sum() / y.shape[1]
            g = torch.autograd.grad(L, P, materialize_grads=True)
        return s[0].detach(), list(g)

    @torch.no_grad()
    def bptt_batch(self, x, y):
        """One truncated-BPTT SGD step of every member (netFunctions.bptt_batch).  Returns s_0(T)."""
        s0, grads = self.bptt_grads(x, y)
        for i, (p, g) in enumerate(zip(self.P, grads)):
            p.add_(g.mul_(-self.lr[:, i // 2].view(-1, *(1,) * (p.dim() - 1))))
        return s0


@dataclass
class MemberWeights:
    """One member's weights in its single net's state_dict form (same keys and shapes), for
    results.save_checkpoint."""
    stack: Stack
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
    """A StackedFC (StackedConv for convEP) of copies of the nets' parameters, with the members' beta, lr
    and nudging."""
    w = nets[0].layers[0].weight
    P = [torch.stack([p.detach() for p in ps]) for ps in zip(*(n.param_list() for n in nets))]
    beta = torch.tensor([c.beta for c in cfgs], dtype=w.dtype, device=w.device)
    lr = torch.tensor([c.lr_tab for c in cfgs], dtype=w.dtype, device=w.device)
    symmetric = torch.tensor([c.nudging == "symmetric" for c in cfgs], device=w.device)
    return (StackedConv if cfgs[0].kind == "conv" else StackedFC)(nets[0], P, beta, lr, symmetric)


@dataclass
class Run:
    """One training method's stack: method EP or BPTT, suffix of its results keys ('' or '_bptt');
    graph: its training batch captured as a CUDA graph (GraphedBatch), made at its first full batch
    on a GPU."""
    method: str
    stack: Stack
    suffix: str
    graph: object = None

    def batch(self, x, y, sign):
        """One training batch of every member (EP with the nudging signs, or BPTT); s_0 of the free phase."""
        return self.stack.ep_batch(x, y, sign) if self.method == "EP" else self.stack.bptt_batch(x, y)


class GraphedBatch:
    """A run's training batch as one CUDA graph, replayed for every batch of every epoch.

    On a GPU a population's batch is T + Kmax steps of a few small kernels each (more for BPTT's
    window), launched one by one from Python: the launches, not the arithmetic, bound it.  The whole
    batch (free phase, nudged phases, update; or the BPTT window, its autograd backward and the
    update) is captured once and replayed: the inputs go through fixed buffers, the weights are
    updated in place in their own tensors (so freezing a member, an in-place write, is seen by the
    graph).  Capture needs warm-up batches on a side stream; they train, so the weights are saved
    before and put back after them.  Only on CUDA, only for full batches (a last, smaller batch runs
    eagerly)."""

    def __init__(self, run, x, y, sign, warmup=3):
        stack = run.stack
        self.x, self.y, self.sign = x.clone(), y.clone(), sign.clone()
        saved = [p.detach().clone() for p in stack.P]
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run.batch(self.x, self.y, self.sign)
        torch.cuda.current_stream(x.device).wait_stream(side)
        with torch.no_grad():
            for p, q in zip(stack.P, saved):
                p.copy_(q)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):  # the warm-up's stream: its library handles exist
            self.s0 = run.batch(self.x, self.y, self.sign)

    def __call__(self, x, y, sign):
        self.x.copy_(x)
        self.y.copy_(y)
        self.sign.copy_(sign)
        self.graph.replay()
        return self.s0


def run_batch(run, x, y, sign, graphs, log):
    """run.batch, through its CUDA graph where `graphs` and the batch is full; a capture that fails
    is reported once and the run goes on eagerly."""
    if graphs and x.is_cuda and run.graph is not False and (run.graph is None or run.graph.x.shape == x.shape):
        if run.graph is None:
            try:
                run.graph = GraphedBatch(run, x, y, sign)
            except Exception as e:  # capture is a CUDA-version-dependent feature: never lose the run to it
                run.graph = False
                log(f"warning: {run.method} batch not captured as a CUDA graph ({' '.join(str(e).split())[:200]}); "
                    "running eagerly")
                return run.batch(x, y, sign)
        return run.graph(x, y, sign)
    return run.batch(x, y, sign)


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


def train_epoch(run, cfgs, X, Y, epoch, frozen, graphs=True, log=print):
    """One epoch of online SGD of every member (netFunctions.train): the prediction of each batch
    is made before its update.  A member whose loss turns NaN/inf is frozen at once; weights that
    are NaN/inf at the end of the epoch are reported too.  frozen: the members frozen before.
    graphs: on a GPU, replay each batch as a CUDA graph (GraphedBatch)."""
    t0 = time.perf_counter()
    stack, M, B = run.stack, len(cfgs), cfgs[0].batch_size
    perms, signs, nb = member_batches(cfgs, X.shape[0], epoch, stack.P[0].dtype, X.device)
    wrong = torch.zeros(M, dtype=torch.long, device=X.device)
    loss_sum, diverged = [0.0] * M, [None] * M
    for i in range(nb):
        idx = perms[:, i * B:(i + 1) * B]
        x, y = X[idx], Y[idx]
        s0 = run_batch(run, x, y, signs[:, i], graphs, log)
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


EVAL_ELEMENTS = 2 ** 21  # states of at most this many numbers per evaluation chunk (a few MB each)


@torch.no_grad()
def evaluate(stack, X, Y, batch_size):
    """Test error % of every member (netFunctions.evaluate): T free steps on the shared test set,
    batch_size examples at a time, in chunks of members small enough to keep every state tensor a
    few MB (large test batches are arithmetic-bound: stacking more members gains nothing there)."""
    width = stack.width * min(batch_size, X.shape[0])
    chunk = max(1, EVAL_ELEMENTS // width)
    wrong = torch.zeros(stack.M, dtype=torch.long, device=X.device)
    for lo in range(0, stack.M, chunk):
        sub = stack.members(lo, min(stack.M, lo + chunk))
        for i in range(0, X.shape[0], batch_size):
            x, y = X[i:i + batch_size], Y[i:i + batch_size]
            wrong[lo:lo + chunk] += (sub.free_phase(x)[0].argmax(2) != y.argmax(1)).sum(1)
    return [100.0 * w / X.shape[0] for w in wrong.tolist()]


# ------------------------------------------------------------------------------------------------
# The projected wall time, measured before training

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_of(stack):
    """A stack on copies of the tensors: timing batches on it leaves the population's weights alone."""
    return type(stack)(stack.net, [p.clone() for p in stack.P], stack.beta.clone(), stack.lr.clone(),
                       stack.symmetric.clone())


def seconds_per_epoch(run, cfgs, Xtr, Ytr, Xte, Yte, batches=3, warmup=2, graphs=True, log=print):
    """One method's projected wall seconds per epoch of the whole population: the median of
    `batches` training batches of epoch 1's data order, timed after `warmup` batches, on a copy of
    the stack, times the epoch's batches, plus a test pass projected from one timed chunk of up to
    100 test images (per image; a full test batch runs at least as fast per image)."""
    probe, B, device = Run(run.method, copy_of(run.stack), run.suffix), cfgs[0].batch_size, Xtr.device
    stack = probe.stack
    perms, signs, nb = member_batches(cfgs, Xtr.shape[0], 1, stack.P[0].dtype, device)
    times = []
    for i in range(min(warmup + batches, nb)):
        idx = perms[:, i * B:(i + 1) * B]
        sync(device)
        t0 = time.perf_counter()
        run_batch(probe, Xtr[idx], Ytr[idx], signs[:, i], graphs, log)  # a first GPU batch captures its graph
        sync(device)
        times.append(time.perf_counter() - t0)
    timed = sorted(times[warmup:] or times)
    per_batch = timed[len(timed) // 2]
    n = min(100, Xte.shape[0])
    sync(device)
    t0 = time.perf_counter()
    evaluate(stack, Xte[:n], Yte[:n], cfgs[0].test_batch_size)
    sync(device)
    return per_batch * nb + (time.perf_counter() - t0) * Xte.shape[0] / n


def clock(seconds):
    if seconds < 600:
        return f"{seconds:.0f} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def log_projection(pop, Xtr, Ytr, Xte, Yte, log, graphs=True):
    """Print the population's projected wall time (every method, every epoch, the test passes)
    before it trains; returns the projected seconds."""
    per_epoch = {r.method: seconds_per_epoch(r, pop.cfgs, Xtr, Ytr, Xte, Yte, graphs=graphs, log=log)
                 for r in pop.runs}
    epochs = pop.cfgs[0].epochs
    total = epochs * sum(per_epoch.values())
    log(f"projected wall time: {clock(total)} for {epochs} epoch{'s' * (epochs > 1)} of {pop.M} members ("
        + ", ".join(f"{m} {clock(t)} an epoch" for m, t in per_epoch.items())
        + "), from 3 timed batches of each method and 100 test images", flush=True)
    return total


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
    """Every member's result folder with hyperparameters.txt, config.json and its initial results.
    argv: the command line recorded in config.json, one for all members or a list of one per member."""
    made = [rs.createPath(c, c.results_dir) for c in pop.cfgs]
    folders = [p for p, _ in made]
    argvs = argv if argv and not isinstance(argv[0], str) else [argv] * pop.M
    results = []
    for m, (c, (path, name)) in enumerate(zip(pop.cfgs, made)):
        rs.createHyperparameterfile(path, name, c)
        write_member_config(path, c, pop.device, population_record(pop.cfgs, m, folders), argvs[m])
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
        flat = not cfg.C_tab  # the conv net takes images
        Xtr, Ytr = mnist.load_mnist(cfg.data_dir, True, cfg.train_subset, flat, device, log=log)
        Xte, Yte = mnist.load_mnist(cfg.data_dir, False, cfg.test_subset, flat, device, log=log)
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


def train_population(cfgs, log=print, argv=None, figures=True, graphs=True):
    """Train the members of a population, epoch by epoch, as one computation; each member's folder
    gets its single run's files after every epoch.  argv: the command line for config.json, shared or
    one per member; graphs: on a GPU, replay every training batch as a CUDA graph (GraphedBatch).
    Returns one experiment.Outcome per member (code 3 and the message for a member that diverged)."""
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
    log_projection(pop, Xtr, Ytr, Xte, Yte, log, graphs)
    for epoch in range(1, pop.cfgs[0].epochs + 1):
        for run in pop.runs:
            stats = train_epoch(run, pop.cfgs, Xtr, Ytr, epoch, progress.stopped, graphs, log)
            t0 = time.perf_counter()
            test = evaluate(run.stack, Xte, Yte, pop.cfgs[0].test_batch_size)
            record_epoch(pop, run, stats, test, progress, time.perf_counter() - t0, log)
            log_epoch(pop, epoch, run, stats, test, progress.stopped, log)  # as a single run's epoch lines
        save_epoch(pop, epoch, progress)
        if len(progress.stopped) == pop.M:
            break
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
