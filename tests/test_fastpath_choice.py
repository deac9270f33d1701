"""The speed layer (fastpath.py) as chosen by `fast=` at construction.

A net built by build_net(cfg, fast=True) and one built by build_net(cfg, fast=False) from the same
Config run different code for the fully connected nets (the in-place stepper, the fused EP update,
the hand-written BPTT adjoints against `step`, the Hebbian terms and autograd): they must give the
same states, EP updates and BPTT gradients in float64.  The choice is made once and cannot be
changed afterwards; the activation kernels of the speed layer reproduce the paper's rho, rho'.
"""
import copy
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fastpath  # noqa: E402
import netClasses as nc  # noqa: E402
from config import Config  # noqa: E402

F64 = torch.float64
B = 5

# Tiny settings of every class; weights are scaled up (see _pair) so that states cover the range of
# the activation, the clamp of EPcont is hit and hardsigm's flat parts matter (in EPdisc less: there
# x3 saturates every neuron and leaves no gradient).
CONFIGS = {
    "disc-sigm": Config(discrete=True, size_tab=[10, 20, 16, 12], dt=1.0, activation_function="sigm"),
    "disc-tanh-leaky": Config(discrete=True, size_tab=[10, 20, 12], dt=0.5, activation_function="tanh"),
    "disc-hardsigm": Config(discrete=True, size_tab=[10, 20, 16, 12], dt=1.0, activation_function="hardsigm"),
    "cont-sigm-clamp": Config(size_tab=[10, 20, 16, 12], dt=0.3, activation_function="sigm"),
    "cont-hardsigm-clamp": Config(size_tab=[10, 20, 12], dt=0.5, activation_function="hardsigm"),
    "cont-tanh-noclamp": Config(size_tab=[10, 20, 16, 12], dt=0.2, activation_function="tanh", no_clamp=True),
    "toy": Config(toymodel=True, size_tab=[10, 20, 12], dt=0.2, activation_function="tanh", no_clamp=True),
    "conv": Config(size_tab=[10], C_tab=[4, 2, 1], activation_function="hardsigm", dt=1.0),
}
FC = [k for k in CONFIGS if k.startswith(("disc", "cont"))]


def _cfg(name):
    c = CONFIGS[name]
    return c.replace(T=25, Kmax=6, beta=0.3, lr_tab=[0.3, 0.2, 0.1][:c.n_weight_layers])


def _pair(name, seed=0):
    """(fast, plain): the same Config, the same weights (x3; x1.5 for disc-hardsigm), float64."""
    cfg = _cfg(name)
    torch.manual_seed(seed)
    fast = nc.build_net(cfg, fast=True).double()
    with torch.no_grad():
        for p in fast.param_list():
            p.mul_(1.5 if name == "disc-hardsigm" else 3.0)
    plain = nc.build_net(cfg, fast=False).double()
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def _data(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (B, 1, 28, 28) if isinstance(net, nc.convEP) else (B, net.size_tab[-1])
    x = torch.rand(*shape, generator=g, dtype=F64)
    y = torch.eye(net.size_tab[0], dtype=F64)[torch.randint(0, net.size_tab[0], (B,), generator=g)]
    return x, y


def _close(a, b, tol=1e-12):
    """max |a - b| <= tol * max(1, max |b|) for each pair of tensors.  Measured for the settings
    above: states <= 7.5e-15, BPTT gradients <= 3.1e-15, EP updates <= 4.2e-16."""
    for u, v in zip(a, b, strict=True):
        u, v = u.detach(), v.detach()
        assert u.shape == v.shape
        err = (u - v).abs().max().item()
        assert err <= tol * max(1.0, v.abs().max().item()), err


# ------------------------------------------------------------------------------------------------
# fast and plain agree (fully connected nets: the two paths are different code)

@pytest.mark.parametrize("name", FC)
def test_fast_and_plain_states_agree(name):
    fast, plain = _pair(name)
    assert fast.fast and not plain.fast
    x, y = _data(fast)
    assert isinstance(fast.context(x), fastpath.LayeredContext)  # the speed layer really runs
    assert isinstance(plain.context(x), nc.Context)
    sf, sp = fast.free_phase(x), plain.free_phase(x)
    _close(sf, sp)
    kf, kp = [], []
    nf_ = fast.nudged_phase(x, sf, y, record=lambda k, a, b: kf.append(fast.clone_state(b)))
    np_ = plain.nudged_phase(x, sp, y, record=lambda k, a, b: kp.append(plain.clone_state(b)))
    assert len(kf) == len(kp) == fast.Kmax
    for a, b in zip(kf + [nf_], kp + [np_]):
        _close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(np_, sp))  # the nudge moved the state
    if name.endswith("-clamp"):  # the clamp was active
        assert any(((t == 0) | (t == 1)).any() for t in sp)


@pytest.mark.parametrize("name", FC)
@pytest.mark.parametrize("beta", [0.3, -0.2])
def test_fast_and_plain_ep_updates_agree(name, beta):
    """The fused EP update against updateWeights(computeGradients(...)), from the same states."""
    fast, plain = _pair(name)
    x, y = _data(fast)
    seq = plain.free_phase(x)
    s = plain.nudged_phase(x, seq, y, beta=beta)
    before = [p.detach().clone() for p in plain.param_list()]
    fast.ep_update(beta, x, s, seq)
    plain.ep_update(beta, x, s, seq)
    _close(fast.param_list(), plain.param_list())
    assert all(not torch.equal(a, b) for a, b in zip(plain.param_list(), before))


@pytest.mark.parametrize("name", FC)
@pytest.mark.parametrize("K", [1, 6])
def test_fast_and_plain_bptt_grads_agree(name, K):
    """The hand-written adjoint (EPdisc's or EPcont's, as the class chose) against autograd."""
    fast, plain = _pair(name)
    x, y = _data(fast)
    lf, s0f, gf = fast.bptt_grads(x, y, K)
    lp, s0p, gp = plain.bptt_grads(x, y, K)
    _close([s0f], [s0p])
    _close(gf, gp)
    assert any(g.abs().max() > 1e-3 for g in gp)
    # the loss of both: L = (1/2B) sum_b ||s_0^b - y^b||^2, summed here in Python from the entries
    want = math.fsum(0.5 * (a - t) ** 2 for a, t in zip(s0p.flatten().tolist(), y.flatten().tolist())) / B
    assert lf.item() == pytest.approx(want, rel=1e-14)
    assert lp.item() == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("name", ["toy", "conv"])
def test_classes_without_speed_layer_run_plain(name):
    """toyEPcont and convEP have no speed layer: fast=True builds them on the plain path."""
    net = nc.build_net(_cfg(name), fast=True)
    assert not net.fast and net.path is nc.PLAIN_PATH
    x, _ = _data(net.double())
    assert isinstance(net.context(x), nc.Context)


# ------------------------------------------------------------------------------------------------
# the choice is made once

@pytest.mark.parametrize("fast", [True, False])
def test_choice_cannot_be_changed_after_construction(fast):
    net = nc.build_net(_cfg("disc-sigm"), fast=fast)
    with pytest.raises(AttributeError):
        net.fast = not fast
    with pytest.raises(AttributeError):
        net.path = nc.PLAIN_PATH
    other = nc.build_net(_cfg("disc-sigm"), fast=not fast)
    net.load_state_dict(other.state_dict())
    net = net.double().to("cpu")
    assert net.fast is fast
    twin = copy.deepcopy(net)
    assert twin.fast is fast and type(twin.path) is type(net.path)
    x, _ = _data(net)
    assert isinstance(twin.context(x), fastpath.LayeredContext if fast else nc.Context)


def test_each_setting_gets_its_adjoint():
    """One speed layer for both fully connected classes; the adjoint is chosen by the setting."""
    disc, cont = (nc.build_net(_cfg(n)) for n in ("disc-sigm", "cont-sigm-clamp"))
    assert type(disc.path) is type(cont.path) is fastpath.LayeredFastPath
    assert disc.path.adjoint is fastpath.epdisc_bptt_grads
    assert cont.path.adjoint is fastpath.epcont_bptt_grads


# ------------------------------------------------------------------------------------------------
# activations: the paper's rho, rho' in netClasses; the speed layer's forms in fastpath

def test_speed_layer_needs_its_kernels():
    """An activation the speed layer has no kernels for: fast=True refuses, fast=False runs (the
    networks need only rho and rho')."""
    softsign = nc.Activation("softsign", lambda u: u / (1 + u.abs()), lambda u: 1 / (1 + u.abs()) ** 2)
    kw = dict(T=10, Kmax=3, beta=0.1, dt=0.5, lr_tab=[0.1, 0.1], activation=softsign)
    with pytest.raises(ValueError, match="softsign"):
        nc.EPcont([3, 5, 4], **kw)
    net = nc.EPcont([3, 5, 4], fast=False, **kw).double()
    x = torch.rand(2, 4, dtype=F64)
    s = net.free_phase(x)
    assert all(torch.isfinite(t).all() and t.abs().max() > 0 for t in s)


@pytest.mark.parametrize("name", sorted(nc.ACTIVATIONS))
def test_kernels_reproduce_the_activation(name):
    """rho(u) = prim(scale u + shift) (out= and in place), rho'(u) from rho(u), and rho''(u) from
    rho and rho' (against autograd's second derivative; None for hardsigm, whose rho' autograd
    cannot differentiate)."""
    act, kern = nc.ACTIVATIONS[name], fastpath.activation_kernels(nc.ACTIVATIONS[name])
    u = torch.linspace(-2.5, 2.5, 2001, dtype=F64)
    if name == "hardsigm":  # away from the kinks
        u = u[(u.abs() > 1e-3) & ((u - 1).abs() > 1e-3)]
    r = act.rho(u)
    v = kern.scale * u + kern.shift
    torch.testing.assert_close(kern.prim(v, out=torch.empty_like(u)), r, rtol=0, atol=1e-15)
    torch.testing.assert_close(kern.prim_(v.clone()), r, rtol=0, atol=1e-15)
    rp = kern.rhop_from_rho(u, r, torch.empty_like(u))
    torch.testing.assert_close(rp, act.rhop(u), rtol=0, atol=1e-14)
    w = u.clone().requires_grad_()
    if name == "hardsigm":
        assert kern.rhopp is None and not act.rhop(w).requires_grad
        return
    (g2,) = torch.autograd.grad(act.rhop(w).sum(), w)
    torch.testing.assert_close(kern.rhopp(r, rp), g2, rtol=0, atol=1e-13)
    assert g2.abs().max() > 0.1


def test_every_activation_has_kernels():
    assert set(fastpath.KERNELS) == set(nc.ACTIVATIONS)


def test_loss_is_the_paper_cost():
    """L = (1/2B) sum_b ||s_0^b - y^b||^2, against the sum written out in Python."""
    g = torch.Generator().manual_seed(0)
    s0, y = torch.rand(7, 4, generator=g, dtype=F64), torch.rand(7, 4, generator=g, dtype=F64)
    rows = s0.tolist(), y.tolist()
    want = sum(0.5 * sum((a - t) ** 2 for a, t in zip(ra, rt)) for ra, rt in zip(*rows)) / 7
    L = nc.loss(s0, y)
    assert L.dim() == 0 and L.item() == pytest.approx(want, rel=1e-14)
