"""The speed layer of the fully connected nets (EPcont, EPdisc): the same equations as
netClasses.py, rearranged to do fewer, larger operations.  Chosen by the networks' constructor
argument `fast`; tests hold every kernel to the plain path (float64 to round-off) and to the
original's outputs (tests/test_golden.py).

- An in-place, pre-scaled stepper: the constants of a step (dt in EB; the activation's scale and
  shift in P, rho(u) = prim(scale u + shift)) are folded into copies of the weights once per batch,
  so a layer's step is one addmm per coupling plus a few in-place ops, in two ping-pong buffers.
  Every product is a @ M^T with M contiguous (nn.Linear's form): MKL's small-M GEMM is fastest
  there (measured here, 1 thread, B = 20: 512 -> 10 6.0 vs 10.8 us; 512 -> 512 116 vs 128 us).
- Wide couplings (both sides >= 256: P-2h, P-3h, EB-2h) through oneDNN's fp32 linear, not MKL
  (see _couple: on AMD CPUs MKL runs AVX2 code, oneDNN AVX-512).
- A fused EP update: one addmm per weight for both phases.
- EPdisc's and EPcont's truncated BPTT by hand-written adjoints whose window runs on the stepper
  above: one GEMM per weight over the K steps.
- The activation in the forms these kernels need (ActivationKernels), one per netClasses activation.

LayeredFastPath bundles them: a fully connected net built with fast=True holds one, chosen by its
constructor, in place of netClasses.PlainPath.  This module knows the networks only through their
attributes (it imports nothing of this project).
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActivationKernels:
    """An activation rho in the forms the speed layer needs: rho(u) = prim(scale u + shift) (so that
    the scale folds into pre-scaled weights), the in-place prim_, its out= form prim(u, out=...),
    rhop_from_rho(u, r, out) = rho'(u) written into out given r = rho(u), and rhopp(r, rp) = rho''(u)
    given r and rp = rho'(u) (None for hardsigm: autograd sees no gradient through its comparison)."""
    scale: float
    shift: float
    prim_: object
    prim: object
    rhop_from_rho: object
    rhopp: object


KERNELS = {  # by the activation's name in netClasses.ACTIVATIONS; a test holds each to its rho, rho'
    "sigm": ActivationKernels(  # rho' = 4 r (1 - r)  ->  rho'' = 4 rho' (1 - 2 r)
        4.0, -2.0, torch.Tensor.sigmoid_, torch.sigmoid,
        lambda u, r, out: torch.addcmul(r, r, r, value=-1.0, out=out).mul_(4.0),
        lambda r, rp: (1.0 - 2.0 * r).mul_(rp).mul_(4.0)),
    "hardsigm": ActivationKernels(
        1.0, 0.0, lambda t: t.clamp_(0.0, 1.0), lambda u, out: torch.clamp(u, 0.0, 1.0, out=out),
        lambda u, r, out: torch.logical_and(u >= 0, u <= 1, out=out), None),
    "tanh": ActivationKernels(  # rho' = 1 - r^2  ->  rho'' = -2 r rho'
        1.0, 0.0, torch.Tensor.tanh_, torch.tanh, lambda u, r, out: torch.mul(r, r, out=out).neg_().add_(1.0),
        lambda r, rp: (-2.0 * r).mul_(rp)),
}


def activation_kernels(act):
    """The speed layer's forms of the activation act (a netClasses.Activation)."""
    if act.name not in KERNELS:
        raise ValueError(f"the speed layer has no kernels for activation {act.name!r}; build with fast=False")
    return KERNELS[act.name]


@dataclass
class LayeredContext:
    """What stays fixed during a batch, pre-scaled by a = dt (EB) or the activation's scale (P):
    for the hidden couplings n < N-1, both directions as a @ M^T products with M contiguous:
    up[n] = (a W_{n,n+1})^T, a view (d_{n+1}, d_n), for h_n += a_{n+1} up[n]; down[n] = a W_{n,n+1},
    a view (d_n, d_{n+1}) of a contiguous transpose, for h_{n+1} += a_n down[n] (views made once per
    batch: a .t() per product costs ~1 us); b[n] = a b_n (+ shift in P),
    dx = the pre-scaled input drive (B, d_{N-1}); r, rp: scratch for rho(s_n), rho'(s_n);
    kern: the activation's kernels."""
    P: list
    x: torch.Tensor
    up: list
    down: list
    b: list
    dx: torch.Tensor
    r: list
    rp: list
    onednn: list  # per hidden coupling n: its two products go through oneDNN (see _onednn_pays)
    kern: ActivationKernels


# oneDNN's fp32 linear (the kernel torch.compile's CPU backend calls), where it pays: MKL, torch's
# fp32 GEMM on x86, runs its AVX2 code on AMD CPUs, oneDNN its AVX-512 code.  Measured on this
# project's machine (AMD EPYC, Zen 5), B = 20, one 512 x 512 coupling both ways: 266 -> 175 us at 1
# thread, 266 -> 105 us at 2; but 512 -> 10 and 10 -> 512 take 16 us against 6-8 us (fixed cost), so
# only couplings whose both sides are >= ONEDNN_MIN_WIDTH use it.  fp32 on the CPU only (oneDNN has no
# fp64 linear: the float64 tests and golden tests run the MKL path); results move at fp32 round-off.
ONEDNN_MIN_WIDTH = 256
onednn_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _onednn_pays(w):
    return (onednn_linear is not None and torch.backends.mkldnn.is_available() and w.device.type == "cpu"
            and w.dtype == torch.float32 and min(w.shape) >= ONEDNN_MIN_WIDTH)


def _couple(out, bias, a, M, onednn):
    """out = bias + a @ M (bias: a vector, or the (B, d) input drive), or out += a @ M when bias is
    None.  M is a view whose transpose is contiguous (the (out, in) weight layout that both MKL's
    fast form and oneDNN's linear want)."""
    if not onednn:
        return out.addmm_(a, M) if bias is None else torch.addmm(bias, a, M, out=out)
    vector = bias is not None and bias.dim() == 1
    r = onednn_linear(a, M.t(), bias if vector else None, "none", [], "")
    if bias is None:
        return out.add_(r)
    return out.copy_(r) if vector else torch.add(bias, r, out=out)


@torch.no_grad()
def layered_context(net, x, P, kern):
    a, c = (net.dt, 0.0) if not net.prototypical else (kern.scale, kern.shift)
    W = [a * P[2 * n] for n in range(net.ns - 1)]  # the hidden couplings; the input weights below
    b = [a * P[2 * n + 1] + c for n in range(net.ns)]
    if math.frexp(a)[0] == 0.5:  # a power of two: alpha = a rounds exactly as pre-scaled weights would,
        dx = torch.addmm(b[-1], net.phi(x), P[-2].t(), alpha=a)  # without copying the 512 x 784 matrix
    else:
        dx = torch.addmm(b[-1], net.phi(x), (a * P[-2]).t())
    r = [net.zeros(x.shape[0], d) for d in net.size_tab[:-1]]
    up, down = [w.t() for w in W], [w.t().contiguous().t() for w in W]
    onednn = [_onednn_pays(w) for w in W]
    return LayeredContext(P, x, up, down, b, dx, r, [torch.empty_like(t) for t in r], onednn, kern)


def _rho_into(kern, u, out):
    """rho(u) written into out, as prim(scale u + shift)."""
    if kern.scale == 1 and kern.shift == 0:
        out.copy_(u)
    else:
        torch.mul(u, kern.scale, out=out).add_(kern.shift)
    return kern.prim_(out)


def layered_step(net, s, ctx, y, beta, out, pre=None, keep=None):
    """One step of net.step(s, ...) written into the buffers `out` (never aliasing s).  For the BPTT
    adjoints: pre, buffers that keep the scaled pre-activations (P: u_n = a h_n + c, as
    rho(h_n) = prim(u_n); EB: dt h_n); keep (EB only), buffers (r, rp, mask) for rho(s_n) and
    rho'(s_n) of every layer and the clamp's mask of the step (1 where 0 <= u_n <= 1)."""
    N, up, down, b, dt, kern = net.ns, ctx.up, ctx.down, ctx.b, net.dt, ctx.kern
    if net.prototypical:
        a = s
    else:  # neighbours are seen through rho; hidden layers need rho'(s) too (the adjoint: all layers)
        r, rp = (ctx.r, ctx.rp) if keep is None else keep[:2]
        a = [_rho_into(kern, s[n], r[n]) for n in range(N)]
        for n in range(0 if keep else 1, N):
            kern.rhop_from_rho(s[n], a[n], rp[n])
    for n in range(N):
        u = out[n] if pre is None else pre[n]
        if n == N - 1:
            _couple(u, ctx.dx, a[n - 1], down[n - 1], ctx.onednn[n - 1])
        else:
            _couple(u, b[n], a[n + 1], up[n], ctx.onednn[n])
            if n > 0:
                _couple(u, None, a[n - 1], down[n - 1], ctx.onednn[n - 1])
        if net.prototypical:  # s + dt (-s + rho(h)), with h already in the scaled space
            kern.prim_(u) if pre is None else kern.prim(u, out=out[n])
            if dt != 1.0:
                out[n].mul_(dt).add_(s[n], alpha=1.0 - dt)
        else:  # s + dt (-s + rho'(s) h), with dt already folded into W and b
            if pre is None:
                if n > 0:
                    out[n].mul_(rp[n])
            elif n > 0:
                torch.mul(u, rp[n], out=out[n])
            else:
                out[n].copy_(u)
            out[n].add_(s[n], alpha=1.0 - dt)
    if beta:
        out[0].add_(y, alpha=beta * dt).sub_(s[0], alpha=beta * dt)
    if net.clamp:
        for n, t in enumerate(out):
            if keep is not None:
                torch.logical_and(t >= 0, t <= 1, out=keep[2][n])
            t.clamp_(0.0, 1.0)
    return out


@torch.no_grad()
def layered_run_steps(net, s, ctx, steps, y, beta, record):
    """`steps` in-place steps from s (never modified), alternating two buffers: no allocation per
    step.  record(k, s_k, s_k+1) sees the buffers: it must read them, not keep them."""
    bufs = ([torch.empty_like(t) for t in s], [torch.empty_like(t) for t in s])
    for k in range(steps):
        s_new = layered_step(net, s, ctx, y, beta, bufs[k % 2])
        if record is not None:
            record(k, s, s_new)
        s = s_new
    return s


@torch.no_grad()
def layered_ep_update(net, beta, x, s, seq):
    """W_n += lr_n/(beta B) [a_n^T a_n+1 |beta - a_n^T a_n+1 |0] as ONE addmm of the stacked phases
    ([a^beta; -a^0]^T [a^beta; a^0]), no intermediate Hebbian matrices; b_n likewise.  The input
    weights see the same x in both phases: (a^beta - a^0)^T phi(x), half the GEMM and no stacking."""
    B, N = x.shape[0], net.ns
    ps, p0 = [net.phi(u) for u in net.neurons(s)], [net.phi(v) for v in net.neurons(seq)]
    for n, m in enumerate(net.layers):
        k = net.lr_tab[n] / (beta * B)
        if n + 1 < N:
            left = torch.cat([ps[n], -p0[n]])  # (2B, d_n)
            m.weight.addmm_(left.t(), torch.cat([ps[n + 1], p0[n + 1]]), alpha=k)
            m.bias.add_(left.sum(0), alpha=k)
        else:
            da = ps[n] - p0[n]  # (B, d_{N-1})
            m.weight.addmm_(da.t(), net.phi(x), alpha=k)
            m.bias.add_(da.sum(0), alpha=k)


def _window_start(net, x, K, kern):
    """The start of a BPTT window on the fast stepper: its context and the T - K free steps from
    zero, kept in stacks S[n] (K+1, B, d_n) with S[n][t] = s_n(T-K+t) (only t = 0 filled here) and
    their per-step views St (made once).  The forward is the free phase's, so s(T) is too."""
    ctx = layered_context(net, x, net.param_list(), kern)
    s = layered_run_steps(net, net.initHidden(x.shape[0]), ctx, net.T - K, None, 0.0, None)
    S = [torch.empty(K + 1, *t.shape, dtype=t.dtype, device=t.device) for t in s]
    St = [v.unbind(0) for v in S]
    for n in range(net.ns):
        St[n][0].copy_(s[n])
    return ctx, S, St


@torch.no_grad()
def epdisc_bptt_grads(net, x, y, K, kern):
    """Truncated BPTT of EPdisc through the last K transitions by a hand-written adjoint: the
    gradients of autograd through net.step (a test holds them to round-off), but the weight
    gradients of all K transitions come out of ONE GEMM per weight on the stacked steps.  The
    forward keeps the window's states and pre-activations in stacks (K+1 or K, B, d_n).
    Returns (s_0(T), grads aligned with P)."""
    N, dt, B = net.ns, net.dt, x.shape[0]
    ctx, S, St = _window_start(net, x, K, kern)
    P = ctx.P
    U = [torch.empty_like(t[1:]) for t in S]  # U[n][t] = the scaled pre-activation of transition t
    G = [torch.empty_like(u) for u in U]  # G[n][t] = dL/dh_n in transition t
    Ut, Gt = ([v.unbind(0) for v in X] for X in (U, G))  # views per step, made once
    for t in range(K):
        layered_step(net, [v[t] for v in St], ctx, None, 0.0, [v[t + 1] for v in St], pre=[v[t] for v in Ut])
    lam = [None] * N  # lam[n] = dL/ds_n(t+1); None = 0
    lam[0] = (S[0][K] - y) / B
    r = [torch.empty_like(u[0]) for u in U] if dt != 1.0 else None  # scratch for rho(h) (dt = 1: s(t+1))
    # s_n feeds h_{n-1} = s_n W_{n-1}^T + ... and h_{n+1} = ... + s_n W_n: (layer m, the matrix to dL/ds_n)
    back = [[(n - 1, P[2 * n - 2])] * (n > 0) + [(n + 1, P[2 * n].t())] * (n < N - 1) for n in range(N)]
    for t in reversed(range(K)):
        for n in range(N):  # rho'(h) from u (hardsigm: scale 1, shift 0, so u = h) and r = rho(h)
            if lam[n] is None:
                Gt[n][t].zero_()
                continue
            rn = St[n][t + 1] if dt == 1.0 else kern.prim(Ut[n][t], out=r[n])
            kern.rhop_from_rho(Ut[n][t], rn, Gt[n][t]).mul_(lam[n])
            if dt != 1.0:
                Gt[n][t].mul_(dt)
        new = []
        for n in range(N):
            l = lam[n] * (1.0 - dt) if dt != 1.0 and lam[n] is not None else None
            for m, M in back[n]:
                l = Gt[m][t] @ M if l is None else torch.addmm(l, Gt[m][t], M)
            new.append(l)
        lam = new
    grads = []
    for n in range(N):
        Gc = G[n].reshape(K * B, -1)  # (K B, d_n)
        if n < N - 1:
            dW = torch.addmm(Gc.t() @ S[n + 1][:K].reshape(K * B, -1), S[n][:K].reshape(K * B, -1).t(),
                             G[n + 1].reshape(K * B, -1))
        else:  # the static input: sum the K steps first, then one product with x
            dW = G[n].sum(0).t() @ x
        grads += [dW, Gc.sum(0)]
    return S[0][K].clone(), grads


@torch.no_grad()
def epcont_bptt_grads(net, x, y, K, kern):
    """Truncated BPTT of EPcont through the last K transitions by a hand-written adjoint: the
    gradients of autograd through net.step (tests hold them to round-off), with the weight gradients
    of all K transitions from ONE GEMM per weight on the stacked steps.  A step is
        u_n = (1 - dt) s_n + dt c_n,  c_0 = h_0,  c_n = rho'(s_n) h_n (n > 0),  s_n' = clamp(u_n, 0, 1),
    h_n from a = rho(s) (net.pre), so its adjoint carries rho'' and the clamp's mask (torch's: the
    gradient passes where 0 <= u <= 1).  The window runs on the fast stepper, which keeps rho(s),
    rho'(s), dt h and the mask of every step in stacks (K, B, d_n).  Returns (s_0(T), grads aligned
    with P)."""
    N, dt, B = net.ns, net.dt, x.shape[0]
    ctx, S, St = _window_start(net, x, K, kern)
    P = ctx.P
    A, RP, H, M = ([torch.empty_like(v[1:]) for v in S] for _ in range(4))  # rho(s), rho'(s), dt h, mask
    G = [torch.empty_like(v[1:]) for v in S]  # G[n][t] = dL/dh_n in transition t
    At, RPt, Ht, Mt, Gt = ([v.unbind(0) for v in X] for X in (A, RP, H, M, G))  # views, made once
    for t in range(K):
        layered_step(net, [v[t] for v in St], ctx, None, 0.0, [v[t + 1] for v in St], pre=[v[t] for v in Ht],
                     keep=([v[t] for v in At], [v[t] for v in RPt], [v[t] for v in Mt]))
    lam = [torch.zeros_like(St[n][K]) for n in range(N)]  # lam[n] = dL/ds_n(t+1)
    lam[0] = (S[0][K] - y) / B
    for t in reversed(range(K)):
        mu = [lam[n].mul_(Mt[n][t]) if net.clamp else lam[n] for n in range(N)]  # dL/du_n
        for n in range(N):
            g = torch.mul(mu[n], dt, out=Gt[n][t])
            if n > 0:
                g.mul_(RPt[n][t])
        new = []
        for n in range(N):
            l = mu[n] * (1.0 - dt)
            if n > 0:  # through rho'(s_n) in c_n: dt mu h rho''(s) = mu (dt h) rho''(s)
                if kern.rhopp is not None:  # (hardsigm: rho'' = 0)
                    l.addcmul_(kern.rhopp(At[n][t], RPt[n][t]).mul_(mu[n]), Ht[n][t])
            da = None  # dL/da_n, a_n = rho(s_n) feeds h_{n-1} (through W_{n-1}) and h_{n+1} (through W_n^T)
            if n > 0:
                da = Gt[n - 1][t] @ P[2 * n - 2]
            if n < N - 1:
                Wn = P[2 * n].t()
                da = Gt[n + 1][t] @ Wn if da is None else torch.addmm(da, Gt[n + 1][t], Wn)
            l.addcmul_(da, RPt[n][t])
            new.append(l)
        lam = new
    Gc, Ac = [g.reshape(K * B, -1) for g in G], [a.reshape(K * B, -1) for a in A]  # (K B, d_n)
    grads = []
    for n in range(N):
        if n < N - 1:
            dW = torch.addmm(Gc[n].t() @ Ac[n + 1], Ac[n].t(), Gc[n + 1])
        else:  # the static input: sum the K steps first, then one product with rho(x)
            dW = G[n].sum(0).t() @ net.phi(x)
        grads += [dW, Gc[n].sum(0)]
    return S[0][K].clone(), grads


class LayeredFastPath:
    """The speed layer of a fully connected net (EPcont, EPdisc): the counterpart of
    netClasses.PlainPath, with the same four operations (context, run_steps, ep_update, bptt_grads)
    and the same results to round-off.  A net built with fast=True makes one at construction, for its
    activation (the kernels) and its setting (EPdisc's adjoint in P, EPcont's in EB)."""

    fast = True

    def __init__(self, act, prototypical):
        self.kern = activation_kernels(act)
        self.adjoint = epdisc_bptt_grads if prototypical else epcont_bptt_grads

    def context(self, net, x, P):
        return layered_context(net, x, P, self.kern)

    run_steps = staticmethod(layered_run_steps)
    ep_update = staticmethod(layered_ep_update)

    def bptt_grads(self, net, x, y, K):
        return self.adjoint(net, x, y, K, self.kern)
