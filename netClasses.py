"""The four networks of Ernoult et al. (NeurIPS 2019): EPcont, EPdisc, toyEPcont, convEP.

This file is the paper, once: each network's step and its Hebbian terms dPhi/dtheta, in the paper's
notation, written plainly (functional, differentiable).  It is the code to read and to change.  The
speed layer (fastpath.py) re-implements the hot loops of the fully connected nets in place; it is
chosen by the constructor argument `fast` and tested against this file to round-off.

Conventions (the paper's and the original code's):
- Layer 0 is the OUTPUT layer; indices grow towards the input x.  States are (B, d_n) row matrices.
- A network is a convergent RNN with static input:  s(t+1) = F(x, s(t), theta),  s(0) = 0.
- Each class says only what differs: `step` (one synchronous time step), `drive` (what is static
  during a batch, computed once: x never changes), `hebbian` (dPhi/dtheta, summed over the batch).
  `EPNet` holds what they share: the free phase (T steps), the nudged phase (Kmax steps, beta > 0),
  the EP update and the truncated-BPTT window.
- How a net runs its phases, its EP update and its BPTT gradients is its `path`, chosen once by the
  constructor's `fast`: PlainPath (this file's equations as written) or, for EPcont and EPdisc,
  fastpath.LayeredFastPath (the same equations rearranged for speed).
- Steppers take the parameter list P explicitly.  Training passes the module's own parameters; the
  GDU analysis passes one leaf copy per transition, which gives the per-transition BPTT gradients
  dL/dtheta_(T-k) in one backward pass.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastpath


# ------------------------------------------------------------------------------------------------
# Activations and the cost.  rhop is a float tensor (the original's hardsigm gave a bool).

@dataclass(frozen=True)
class Activation:
    """The neurons' nonlinearity rho and its derivative rhop (the speed layer keeps its own forms of
    them: fastpath.activation_kernels)."""
    name: str
    rho: object
    rhop: object


def _sigm(u):  # sigmoid centred at 1/2 with slope 1 there, range (0, 1)
    return torch.sigmoid(4.0 * (u - 0.5))


def _sigmp(u):
    r = _sigm(u)
    return 4.0 * r * (1.0 - r)


def _hardsigm(u):
    return u.clamp(0.0, 1.0)


def _hardsigmp(u):
    return ((u >= 0) & (u <= 1)).to(u.dtype)


def _tanhp(u):
    return 1.0 - torch.tanh(u) ** 2


ACTIVATIONS = {
    "sigm": Activation("sigm", _sigm, _sigmp),
    "hardsigm": Activation("hardsigm", _hardsigm, _hardsigmp),
    "tanh": Activation("tanh", torch.tanh, _tanhp),
}


def get_activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def squared_error(s0, y):
    """(1/2) sum_b ||s_0^b - y^b||^2 of output states s0 and targets y, both (B, d_0); a 0-d tensor."""
    return 0.5 * ((s0 - y) ** 2).sum()


def loss(s0, y):
    """The cost of a batch, L = (1/2B) sum_b ||s_0^b - y^b||^2; a 0-d tensor."""
    return squared_error(s0, y) / y.shape[0]


@dataclass
class Context:
    """What stays fixed during a batch on the reference path: the parameters P, the input x and the
    static drive d = net.drive(x, P) (x never changes, so its projection is computed once)."""
    P: list
    x: torch.Tensor
    d: object


# ------------------------------------------------------------------------------------------------

class EPNet(nn.Module):
    """What all four networks share.

    A subclass defines `self.layers` (an nn.ModuleList of modules with .weight and .bias, in the
    order of --lr_tab), `self.ns` (number of neuron layers), `neuron_names`, `synapse_names`, and
    the methods `initHidden`, `drive`, `step`, `hebbian`.  The flat parameter list P is
    [layers[0].weight, layers[0].bias, layers[1].weight, ...]; layer l's learning rate is lr_tab[l].
    `fast` selects the speed layer (fastpath.py) where a class has one (`speed_layer`), else the
    plain path; the choice is made here, once, and `path` and `fast` are read-only.
    """

    layered = True  # output, hidden..., input in a chain: layer n cannot feel the nudge before step n

    def __init__(self, T, Kmax, beta, dt, lr_tab, activation, clamp=False, fast=True):
        super().__init__()
        self.T, self.Kmax, self.beta, self.dt = int(T), int(Kmax), float(beta), float(dt)
        self.lr_tab = [float(lr) for lr in lr_tab] if lr_tab is not None else None
        self.act = activation if isinstance(activation, Activation) else get_activation(activation)
        self.rho, self.rhop = self.act.rho, self.act.rhop
        self.clamp = bool(clamp)
        self._path = (self.speed_layer() if fast else None) or PLAIN_PATH

    def speed_layer(self):
        """This class's speed layer (a path like PlainPath), or None where it has none.  Called by
        the constructor above, before a subclass's own __init__ body: it may use only the
        hyperparameters set there and class attributes."""
        return None

    @property
    def path(self):
        """How this net runs context, run_steps, ep_update and bptt_grads: PLAIN_PATH or its speed
        layer, fixed at construction."""
        return self._path

    @property
    def fast(self):
        """Whether this net runs on its speed layer."""
        return self._path.fast

    # --- plumbing -------------------------------------------------------------------------------
    def param_list(self):
        return [p for m in self.layers for p in (m.weight, m.bias)]

    @property
    def n_weight_layers(self):
        return len(self.layers)

    @property
    def device(self):
        return self.layers[0].weight.device

    def zeros(self, B, *shape):
        """A zero tensor (B, *shape) of the parameters' dtype and device."""
        w = self.layers[0].weight
        return torch.zeros(B, *shape, device=w.device, dtype=w.dtype)

    @staticmethod
    def clone_state(s):
        return [t.detach().clone() for t in s]

    def neurons(self, s):
        """The neuron layers of a state (convEP also carries its pooling indices in the list)."""
        return s[: self.ns]

    # --- the two EP phases (no autograd: EP needs no gradient) -----------------------------------
    @torch.no_grad()
    def context(self, x, P=None):
        """What stays fixed during a batch: a Context on the plain path, the speed layer's own on
        the fast path."""
        return self._path.context(self, x, self.param_list() if P is None else P)

    @torch.no_grad()
    def run_steps(self, s, ctx, steps, y=None, beta=0.0, record=None):
        """`steps` synchronous steps from s (never modified); record(k, s_k, s_k+1) after each.
        On the fast path s_k and s_k+1 are reused buffers: record must read them, not keep them."""
        return self._path.run_steps(self, s, ctx, steps, y, beta, record)

    def free_phase(self, x, s=None, T=None, ctx=None, P=None):
        """T free steps (beta = 0) from s (zero state if None).  Returns s(T)."""
        ctx = self.context(x, P) if ctx is None else ctx
        s = self.initHidden(x.shape[0]) if s is None else s
        return self.run_steps(s, ctx, self.T if T is None else T)

    def nudged_phase(self, x, s, y, beta=None, K=None, ctx=None, P=None, record=None):
        """K nudged steps from s (the free state); beta > 0 pulls the output towards y."""
        ctx = self.context(x, P) if ctx is None else ctx
        beta = self.beta if beta is None else beta
        return self.run_steps(s, ctx, self.Kmax if K is None else K, y, beta, record)

    # --- EP update ------------------------------------------------------------------------------
    @torch.no_grad()
    def computeGradients(self, beta, x, s, seq):
        """EP estimate of -dL/dtheta: (1/(beta B)) [dPhi/dtheta(s^beta) - dPhi/dtheta(s^0)]."""
        B = x.shape[0]
        return [(a - b) / (beta * B) for a, b in zip(self.hebbian(x, s), self.hebbian(x, seq))]

    @torch.no_grad()
    def updateWeights(self, deltas, sign=1.0):
        """Plain SGD step theta += sign * lr * delta, layer l at lr_tab[l] (weight and bias alike);
        sign = -1 descends along gradients without negating copies of them."""
        for l, m in enumerate(self.layers):
            m.weight.add_(deltas[2 * l], alpha=sign * self.lr_tab[l])
            m.bias.add_(deltas[2 * l + 1], alpha=sign * self.lr_tab[l])

    @torch.no_grad()
    def ep_update(self, beta, x, s, seq):
        """The EP training step: updateWeights(computeGradients(...)) (fused on the fast path)."""
        self._path.ep_update(self, beta, x, s, seq)

    # --- truncated BPTT ---------------------------------------------------------------------------
    def bptt_window(self, x, y, K=None, per_transition=False):
        """Run T steps; only the last K transitions record an autograd graph.

        Returns (loss, states, Ps): states[j] = s(T-K+j) for j = 0..K (states[0] carries no graph);
        Ps[j] = the parameter list used by the transition producing states[j+1].  With
        per_transition=True each of those transitions gets its own leaf copy of the parameters, so
        autograd.grad w.r.t. Ps[j] is dL/dtheta_(T-K+j+1), the per-transition gradient of the paper.
        The loss is `loss(s_0(T), y)`.
        """
        K = self.Kmax if K is None else K
        P = self.param_list()
        s = self.free_phase(x, T=self.T - K, P=P)  # no graph: run_steps is no-grad
        states, Ps = [s], []
        d = None if per_transition else self.drive(x, P)
        for _ in range(K):
            Pt = [p.detach().requires_grad_() for p in P] if per_transition else P
            s = self.step(s, self.drive(x, Pt) if per_transition else d, Pt)
            states.append(s)
            Ps.append(Pt)
        return loss(s[0], y), states, Ps

    def bptt_grads(self, x, y, K=None):
        """Truncated-BPTT gradients through the last K (default Kmax) transitions: autograd through
        `step` on the plain path, a hand-written adjoint on the fast path.
        Returns (loss, s_0(T), grads aligned with P)."""
        s0, grads = self._path.bptt_grads(self, x, y, self.Kmax if K is None else K)
        return loss(s0, y), s0, grads

    def forward(self, x, s=None, method="nograd", beta=0.0, target=None, K=None):
        """The original's modes: 'nograd' (free phase if beta == 0, else K nudged steps from s) and
        'withgrad' (the truncated-BPTT forward; returns (loss, final state))."""
        if method == "withgrad":
            L, states, _ = self.bptt_window(x, target, K)
            return L, states[-1]
        if beta == 0:
            return self.free_phase(x, s)
        return self.nudged_phase(x, s, target, beta, K)


class PlainPath:
    """The reference path: the equations of this file as written (`step` in a loop, the Hebbian
    terms, autograd through the BPTT window).  Every net without a speed layer, or built with
    fast=False, runs on PLAIN_PATH; fastpath.LayeredFastPath has the same four operations."""

    fast = False

    @staticmethod
    def context(net, x, P):
        return Context(P, x, net.drive(x, P))

    @staticmethod
    def run_steps(net, s, ctx, steps, y, beta, record):
        for k in range(steps):
            s_new = net.step(s, ctx.d, ctx.P, y, beta)
            if record is not None:
                record(k, s, s_new)
            s = s_new
        return s

    @staticmethod
    def ep_update(net, beta, x, s, seq):
        net.updateWeights(net.computeGradients(beta, x, s, seq))

    @staticmethod
    def bptt_grads(net, x, y, K):
        """(s_0(T), grads aligned with P) by autograd through the window's K transitions."""
        with torch.enable_grad():
            L, states, _ = net.bptt_window(x, y, K)
            grads = torch.autograd.grad(L, net.param_list(), allow_unused=True, materialize_grads=True)
        return states[-1][0].detach(), list(grads)


PLAIN_PATH = PlainPath()


# ------------------------------------------------------------------------------------------------

class _LayeredFC(EPNet):
    """Fully connected layered net, N = ns neuron layers s_0 (output) ... s_{N-1}, input x.
    W_{n,n+1} (d_n x d_{n+1}) and bias b_n live in layers[n], a Linear(d_{n+1} -> d_n); layers[N-1]
    holds the input weights W_{N-1,x}.  The two settings differ only in `phi` (what a neighbour
    sends: rho(s) in EB, s in P) and `settle` (the increment)."""

    def __init__(self, size_tab, **kw):
        super().__init__(**kw)
        if len(size_tab) < 3:
            raise ValueError("size_tab needs >= 3 entries (output, hidden..., input)")
        self.size_tab = list(size_tab)
        self.ns = len(size_tab) - 1
        self.layers = nn.ModuleList(nn.Linear(size_tab[n + 1], size_tab[n]) for n in range(self.ns))
        self.neuron_names = [f"s^{n}" for n in range(self.ns)]
        self.synapse_names = [f"W_{{{n}{n + 1}}}" for n in range(self.ns - 1)] + [f"W_{{{self.ns - 1}x}}"]

    def initHidden(self, B):
        return [self.zeros(B, d) for d in self.size_tab[:-1]]  # s_n: (B, d_n)

    def drive(self, x, P):
        """What is static during a batch: the input drive phi(x) W_{N-1,x}^T + b_{N-1}: (B, d_{N-1}).
        Differentiable, so the BPTT window uses it too."""
        return torch.addmm(P[-1], self.phi(x), P[-2].t())

    def pre(self, a, dx, P, n):
        """What layer n receives, h_n = W_{n,n+1} a_{n+1} + b_n + W_{n-1,n}^T a_{n-1}: (B, d_n), from
        the neighbours' outputs a = phi(s) (the last layer's bottom-up term is the static drive dx)."""
        h = dx if n == self.ns - 1 else torch.addmm(P[2 * n + 1], a[n + 1], P[2 * n].t())  # bottom-up
        if n > 0:
            h = torch.addmm(h, a[n - 1], P[2 * n - 2])  # top-down, through W_{n-1,n}^T
        return h

    def step(self, s, d, P, y=None, beta=0.0):
        a = [self.phi(t) for t in s]
        out = []
        for n in range(self.ns):
            g = self.settle(s[n], self.pre(a, d, P, n), n)
            if n == 0 and beta:
                g = g + beta * (y - s[0])  # the nudge: -beta dl/ds_0
            out.append(s[n] + self.dt * g)
        if self.clamp:
            out = [t.clamp(0.0, 1.0) for t in out]
        return out

    def hebbian(self, x, s):
        """dPhi/dW_{n,n+1} = a_n^T a_{n+1}: (d_n, d_{n+1}); dPhi/db_n = sum_batch a_n: (d_n,)."""
        a = [self.phi(t) for t in s] + [self.phi(x)]
        H = []
        for n in range(self.ns):
            H += [a[n].t() @ a[n + 1], a[n].sum(0)]
        return H

    def speed_layer(self):
        """The in-place stepper, fused EP update and hand-written BPTT adjoint of fastpath.py."""
        return fastpath.LayeredFastPath(self.act, self.prototypical)


class EPcont(_LayeredFC):
    """Energy-based setting (EB): Euler step dt of ds/dt = -dE/ds for a Hopfield-like energy,
        s_n <- s_n + dt (-s_n + rho'(s_n) h_n),  h_n from rho(s_{n+1}), rho(s_{n-1}) (and rho(x)).
    Hidden layers carry the rho'(s_n) factor, the output layer does not (as the authors' code
    does).  States clamped to [0,1] unless --no-clamp."""

    prototypical = False

    def phi(self, t):
        return self.rho(t)

    def settle(self, s_n, h, n):
        return -s_n + (h if n == 0 else self.rhop(s_n) * h)


class EPdisc(_LayeredFC):
    """Prototypical setting (P): s_n <- rho(W_{n,n+1} s_{n+1} + W_{n-1,n}^T s_{n-1} + b_n) for dt = 1
    (the paper's discrete-time model); an explicit dt makes it leaky.  No clamping; the raw input x
    drives the last layer."""

    prototypical = True

    def __init__(self, size_tab, **kw):
        kw["clamp"] = False
        super().__init__(size_tab, **kw)

    def phi(self, t):
        return t

    def settle(self, s_n, h, n):
        return -s_n + self.rho(h)


# ------------------------------------------------------------------------------------------------

class toyEPcont(EPNet):
    """The toy model of Fig. 2: output s_0 (10), hidden s_1 (50), input x (5).  The input feeds both
    layers; no lateral connections.  layers = [A = W_01 (bias a), C = W_0x (bias c), D = W_1x (bias e)].
    Its dynamics derive exactly from the energy
        E = 1/2 sum ||s||^2 - rho(s_0)^T A rho(s_1) - rho(s_0)^T C rho(x) - rho(s_1)^T D rho(x)
            - (a + c)^T rho(s_0) - e^T rho(s_1),
    so the GDU theorem applies exactly as beta -> 0."""

    layered = False  # the input feeds both layers

    def __init__(self, size_tab, **kw):
        super().__init__(**kw)
        if len(size_tab) != 3:
            raise ValueError("toy model sizes must be 'out hidden in'")
        self.size_tab = list(size_tab)
        n0, n1, nx = size_tab
        self.ns = 2
        self.layers = nn.ModuleList([nn.Linear(n1, n0), nn.Linear(nx, n0), nn.Linear(nx, n1)])
        self.neuron_names = ["s^0", "s^1"]
        self.synapse_names = ["W_{01}", "W_{0x}", "W_{1x}"]

    def initHidden(self, B):
        return [self.zeros(B, self.size_tab[0]), self.zeros(B, self.size_tab[1])]

    def drive(self, x, P):
        """The input terms rho(x) C^T + c + a: (B, 10) and rho(x) D^T + e: (B, 50)."""
        A, a, C, c, D, e = P
        rx = self.rho(x)
        return torch.addmm(c + a, rx, C.t()), torch.addmm(e, rx, D.t())

    def step(self, s, d, P, y=None, beta=0.0):
        A = P[0]  # (10, 50)
        r0, r1 = self.rho(s[0]), self.rho(s[1])
        g0 = -s[0] + self.rhop(s[0]) * (r1 @ A.t() + d[0])
        if beta:
            g0 = g0 + beta * (y - s[0])
        g1 = -s[1] + self.rhop(s[1]) * (r0 @ A + d[1])
        out = [s[0] + self.dt * g0, s[1] + self.dt * g1]
        if self.clamp:
            out = [t.clamp(0.0, 1.0) for t in out]
        return out

    def hebbian(self, x, s):
        """-dE/dtheta: rho(s_0)^T rho(s_1), rho(s_0)^T rho(x), rho(s_1)^T rho(x) and the bias terms."""
        r0, r1, rx = self.rho(s[0]), self.rho(s[1]), self.rho(x)
        return [r0.t() @ r1, r0.sum(0), r0.t() @ rx, r0.sum(0), r1.t() @ rx, r1.sum(0)]


# ------------------------------------------------------------------------------------------------

def conv_geometry(C_tab, size_tab, Fconv=5, Fpool=2, padding=False, in_size=28):
    """Spatial sizes of the conv net, from the input up.  Returns (conv_out, pooled), both listed
    top-first (index 0 = the conv layer nearest the classifier), or raises ValueError if a layer
    shrinks to nothing."""
    P = (Fconv - 1) // 2 if padding else 0
    h, conv_out, pooled = in_size, [], []
    for _ in range(len(C_tab) - 1):
        hc = h - Fconv + 1 + 2 * P
        hp = (hc - Fpool) // Fpool + 1 if hc >= Fpool else 0
        if hc < 1 or hp < 1:
            raise ValueError(f"conv geometry shrinks to nothing (input {h}, Fconv {Fconv}, Fpool {Fpool})")
        conv_out.append(hc)
        pooled.append(hp)
        h = hp
    return conv_out[::-1], pooled[::-1]


class convEP(EPNet):
    """Convolutional prototypical net (always step size 1).  For --C_tab 64 32 1 --size_tab 10:
    x (B,1,28,28) -conv_1-> pool -> s_2 (B,32,12,12) -conv_0-> pool -> s_1 (B,64,4,4) -fc_0-> s_0 (B,10).

    layers = [fc_0, ..., fc_{nc-1}, conv_0 (top), ..., conv_{nconv-1} (bottom)], the order of
    --lr_tab.  A conv state is rho(P(conv(state below)) + convT(P^-1(state above))): P max-pools,
    P^-1 unpools with the indices computed in the same step, convT is the transposed convolution
    with the same kernel.  The state list carries, after the neuron layers, the pooling indices of
    each conv state's last step (the EP update needs them).
    """

    prototypical = True

    def __init__(self, size_tab, C_tab, Fconv=5, Fpool=2, padding=False, **kw):
        kw["clamp"] = False
        kw["dt"] = 1.0
        super().__init__(**kw)
        if C_tab[-1] != 1:
            raise ValueError("C_tab must end with 1 (MNIST has one input channel)")
        self.C_tab, self.F, self.Fpool = list(C_tab), int(Fconv), int(Fpool)
        self.pad = (self.F - 1) // 2 if padding else 0
        self.conv_out, self.pooled = conv_geometry(C_tab, size_tab, Fconv, Fpool, padding)
        self.nconv = len(C_tab) - 1
        flat = C_tab[0] * self.pooled[0] ** 2
        self.size_tab = list(size_tab) + [flat]  # the flattened top conv state is appended
        self.nc = len(size_tab)
        self.ns = self.nc + self.nconv
        fc = [nn.Linear(self.size_tab[i + 1], self.size_tab[i]) for i in range(self.nc)]
        conv = [nn.Conv2d(C_tab[j + 1], C_tab[j], self.F, padding=self.pad) for j in range(self.nconv)]
        self.layers = nn.ModuleList(fc + conv)
        self.neuron_names = [f"s^{n}" for n in range(self.ns)]
        self.synapse_names = [f"W_{{fc{i}}}" for i in range(self.nc)] + [f"W_{{conv{j}}}" for j in range(self.nconv)]

    def initHidden(self, B):
        s = [self.zeros(B, d) for d in self.size_tab[: self.nc]]
        s += [self.zeros(B, self.C_tab[j], p, p) for j, p in enumerate(self.pooled)]
        s += [torch.zeros(B, self.C_tab[j], p, p, dtype=torch.long, device=self.device)
              for j, p in enumerate(self.pooled)]
        return s

    def _pool(self, u):
        return F.max_pool2d(u, self.Fpool, stride=self.Fpool, return_indices=True)

    def _unpool(self, s_j, idx, j):
        return F.max_unpool2d(s_j, idx, self.Fpool, stride=self.Fpool, output_size=(self.conv_out[j],) * 2)

    def drive(self, x, P):
        """The bottom conv layer's pooled input and its pooling indices: x is static."""
        return self._pool(F.conv2d(x, P[-2], P[-1], padding=self.pad))

    def step(self, s, d, P, y=None, beta=0.0):
        nc, nconv = self.nc, self.nconv
        out = []
        for n in range(nc):  # classifier layers: s_n (B, d_n)
            below = s[n + 1].flatten(1)
            h = torch.addmm(P[2 * n + 1], below, P[2 * n].t())
            if n > 0:
                h = h + s[n - 1] @ P[2 * n - 2]
            g = -s[n] + self.rho(h)
            if n == 0 and y is not None:  # nudged (y is None in the free phase; a tensor beta works under vmap)
                g = g + beta * (y - s[0])
            out.append(s[n] + g)
        inds = []
        for j in range(nconv):  # conv layers, top first: feedback uses this step's indices above
            W, b = P[2 * (nc + j)], P[2 * (nc + j) + 1]
            pooled, idx = d if j == nconv - 1 else self._pool(F.conv2d(s[nc + j + 1], W, b, padding=self.pad))
            if j == 0:
                fb = (s[nc - 1] @ P[2 * (nc - 1)]).view_as(s[nc])
            else:
                Wa = P[2 * (nc + j - 1)]
                fb = F.conv_transpose2d(self._unpool(s[nc + j - 1], inds[j - 1], j - 1), Wa, padding=self.pad)
            out.append(s[nc + j] + (-s[nc + j] + self.rho(pooled + fb)))
            inds.append(idx)
        return out + inds

    def hebbian(self, x, s):
        nc, nconv = self.nc, self.nconv
        H = []
        for n in range(nc):
            H += [s[n].t() @ s[n + 1].flatten(1), s[n].sum(0)]
        for j in range(nconv):
            U = self._unpool(s[nc + j], s[self.ns + j], j)
            a = x if j == nconv - 1 else s[nc + j + 1]
            W = self.layers[nc + j].weight
            H += [torch.nn.grad.conv2d_weight(a, W.shape, U, padding=self.pad), U.sum((0, 2, 3))]
        return H


# ------------------------------------------------------------------------------------------------

def build_net(cfg, fast=True):
    """The class choice of the original: --toymodel, else --C_tab (conv), else --discrete, else EB.
    cfg: a config.Config (or anything with its attributes)."""
    common = dict(T=cfg.T, Kmax=cfg.Kmax, beta=cfg.beta, dt=cfg.dt, lr_tab=cfg.lr_tab,
                  activation=get_activation(cfg.activation_function), clamp=not cfg.no_clamp, fast=fast)
    if cfg.toymodel:
        return toyEPcont(cfg.size_tab, **common)
    if cfg.C_tab:
        return convEP(cfg.size_tab, cfg.C_tab, Fconv=cfg.Fconv, Fpool=cfg.Fpool,
                      padding=bool(cfg.padding), **common)
    if cfg.discrete:
        return EPdisc(cfg.size_tab, **common)
    return EPcont(cfg.size_tab, **common)
