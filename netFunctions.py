"""The original's routines on the networks: one epoch of training (EP or truncated BPTT), evaluation,
the GDU processes (nS, dS, NT, DT: compute_nSdSDT) and the sign-agreement recipe (receipe).  The
actions that drive them (epochs, checkpoints, result folders) are experiment.py's."""
import random
import sys
import time

import numpy as np
import torch

import metrics
from netClasses import squared_error


class Divergence(RuntimeError):
    """A state or a weight became NaN/inf; the message names epoch, batch and method."""


# ================================================================================================
# Training and evaluation

def ep_batch(net, x, y, nudging="one-sided", sign=1):
    """One EP update: T free steps, Kmax nudged steps, contrastive Hebbian update.  Everything
    without autograd; the static input drive is computed once.  Returns s_0 of the free phase (the
    prediction).  nudging (NUDGINGS): one-sided, the paper's: beta > 0, update
    (1/beta)[dPhi(s^beta) - dPhi(s^0)]; random-sign: the same with beta * sign (sign = +-1, drawn per
    batch by the caller); symmetric: nudged phases with +beta and -beta from the free state, update
    (1/2beta)[dPhi(s^+beta) - dPhi(s^-beta)], whose O(beta) bias cancels (Laborieux et al. 2021)."""
    with torch.no_grad():
        ctx = net.context(x)
        seq = net.free_phase(x, ctx=ctx)
        if nudging == "symmetric":
            s_plus = net.nudged_phase(x, seq, y, ctx=ctx)
            s_minus = net.nudged_phase(x, seq, y, beta=-net.beta, ctx=ctx)
            net.ep_update(2 * net.beta, x, s_plus, s_minus)
        else:
            beta = net.beta * sign
            s = net.nudged_phase(x, seq, y, beta=beta, ctx=ctx)
            net.ep_update(beta, x, s, seq)
    return seq[0]


def nudge_signs(seed, epoch, n):
    """random-sign nudging: the signs of an epoch's n batches, a function of (seed, epoch) only, so a
    resumed run draws the same ones."""
    g = torch.Generator().manual_seed((int(seed) * 100003 + int(epoch)) * 2 + 1)
    return (torch.randint(0, 2, (n,), generator=g) * 2 - 1).tolist()


def bptt_batch(net, x, y, K=None):
    """One truncated-BPTT update: backprop through the last K (default Kmax) transitions of the
    free phase, loss (1/2B) sum ||s_0(T) - y||^2, SGD with the same per-layer rates as EP."""
    _, s0, grads = net.bptt_grads(x, y, K)  # autograd, or EPdisc's hand-written adjoint
    with torch.no_grad():
        net.updateWeights(grads, sign=-1.0)
    return s0


def batch_loss(s0, y):
    """The batch's L as a Python float; the 1/B in float64, as the training log always had it."""
    return squared_error(s0, y).item() / y.shape[0]


def epoch_order(n, seed, epoch):
    """The data order of an epoch depends only on (seed, epoch): a resumed run and a benchmark
    pair see the same batches as an uninterrupted run."""
    g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
    return torch.randperm(n, generator=g)


def train(net, X, Y, method, batch_size, seed, epoch, quiet=False, nudging="one-sided"):
    """One epoch of online SGD (one update per mini-batch).  The training error is measured as the
    original does: on the fly, with each batch's prediction made before its update.
    Returns (train error %, mean batch loss, seconds)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    perm = epoch_order(X.shape[0], seed, epoch).to(X.device)
    nb = (X.shape[0] + batch_size - 1) // batch_size
    signs = nudge_signs(seed, epoch, nb) if nudging == "random-sign" else [1] * nb
    wrong, seen, loss_sum = 0, 0, 0.0
    bar = tqdm(range(nb), desc=f"epoch {epoch} {method}", leave=False, dynamic_ncols=True,
               disable=quiet or not sys.stdout.isatty())
    for i in bar:
        idx = perm[i * batch_size:(i + 1) * batch_size]
        x, y = X[idx], Y[idx]
        s0 = ep_batch(net, x, y, nudging, signs[i]) if method == "EP" else bptt_batch(net, x, y)
        loss = batch_loss(s0, y)
        if not np.isfinite(loss):
            raise Divergence(f"diverged: epoch {epoch}, batch {i + 1}, method {method} (state is NaN/inf)")
        wrong += (s0.argmax(1) != y.argmax(1)).sum().item()
        seen += y.shape[0]
        loss_sum += loss
        if i % 20 == 0:
            bar.set_postfix(err=f"{100.0 * wrong / seen:.2f}%")
    if not all(torch.isfinite(p).all() for p in net.param_list()):
        raise Divergence(f"diverged: epoch {epoch}, batch {nb}, method {method} (weights are NaN/inf)")
    return 100.0 * wrong / seen, loss_sum / nb, time.perf_counter() - t0


@torch.no_grad()
def evaluate(net, X, Y, batch_size=1000):
    """Test error in %: T free steps from zero, prediction = argmax s_0."""
    wrong = 0
    for i in range(0, X.shape[0], batch_size):
        x, y = X[i:i + batch_size], Y[i:i + batch_size]
        s = net.free_phase(x)
        wrong += (s[0].argmax(1) != y.argmax(1)).sum().item()
    return 100.0 * wrong / X.shape[0]


# ================================================================================================
# GDU processes

def compute_NT(net, x, y, K=None, with_nS=False):
    """The BPTT processes in ONE free phase and ONE backward pass.

    The last K transitions each use their own leaf copy of the parameters, so one autograd.grad
    gives the per-transition weight gradients dL/dW_(T-k); their cumulative sum is NT[k] (the
    gradient of a BPTT truncated to k+1 transitions).  Only those K transitions keep a graph.
    Returns NT, NT[l] of shape (K, *W) (batch-mean gradients); with_nS=True returns (NT, nS, s_T):
    also nS[n] of shape (K, *unit) and the free state s(T) (detached).  The original ran K separate
    truncated BPTT runs; a test proves this one pass equals them."""
    K = net.Kmax if K is None else K
    loss, states, Ps = net.bptt_window(x, y, K, per_transition=True)
    ns, L = net.ns, net.n_weight_layers
    st = [states[K - k][n] for k in range(K) for n in range(ns)]  # states[K-k] = s(T-k)
    s_extra = states[K][ns:]  # convEP's pooling indices of s(T)
    ws = [Ps[K - 1 - k][2 * l] for k in range(K) for l in range(L)]  # Ps[K-1-k] produced s(T-k)
    grads = list(torch.autograd.grad(loss, st + ws, allow_unused=True))
    del loss, states, Ps

    def collect(offset, count, i, like):
        """Stack the K gradients of item i (zeros where unused), dropping each as it is copied:
        peak memory stays at one copy of the per-transition gradients."""
        out = torch.zeros(K, *like.shape, dtype=like.dtype, device=like.device)
        for k in range(K):
            j = offset + k * count + i
            if grads[j] is not None:
                out[k] = grads[j]
            grads[j] = None
        return out

    nS = [collect(0, ns, n, st[n]).sum(1) for n in range(ns)]  # sum over batch (L carries 1/B)
    NT = [collect(len(st), L, l, ws[l]).cumsum_(0) for l in range(L)]
    s_T = [t.detach() for t in st[:ns]] + [t.detach() for t in s_extra]
    return (NT, nS, s_T) if with_nS else NT


def compute_dSDT(net, x, y, seq, beta=None, K=None, nudging="one-sided", sign=1):
    """EP processes from the free state seq: K nudged steps; after step k,
    dS[n][k] = -(s_n(k+1) - s_n(k)) / (beta dt) (batch mean; 0 where a clamp hit 0 or 1), and
    DT[l][k] = -(1/(beta B)) [dPhi/dW(s^beta(k+1)) - dPhi/dW(s^0)], the cumulated EP update with its
    sign flipped so that it estimates +dL/dW.  dS is zeroed for k < n in layered nets, as the
    original does (the nudge cannot have reached layer n yet).  random-sign uses beta * sign;
    symmetric the same differences between the +beta and the -beta phases, over 2 beta."""
    K = net.Kmax if K is None else K
    beta = (net.beta if beta is None else beta) * sign
    if nudging == "symmetric":
        return _symmetric_dSDT(net, x, y, seq, beta, K)
    B, L = x.shape[0], net.n_weight_layers
    P = net.param_list()
    with torch.no_grad():
        H0 = net.hebbian(x, seq)
        dS = [torch.zeros(K, *t.shape[1:], dtype=t.dtype, device=t.device) for t in net.neurons(seq)]
        DT = [torch.zeros(K, *P[2 * l].shape, dtype=P[0].dtype, device=P[0].device) for l in range(L)]

        def record(k, s_old, s_new):
            for n in range(net.ns):
                inc = s_new[n] - s_old[n]
                if net.clamp:
                    inc = torch.where((s_new[n] == 0) | (s_new[n] == 1), torch.zeros_like(inc), inc)
                dS[n][k] = -inc.sum(0) / (beta * net.dt * B)
            H = net.hebbian(x, s_new)
            for l in range(L):
                DT[l][k] = -(H[2 * l] - H0[2 * l]) / (beta * B)

        s = net.nudged_phase(x, seq, y, beta=beta, K=K, P=P, record=record)
        if net.layered:
            for n in range(net.ns):
                dS[n][:n] = 0
    return dS, DT, s


@torch.no_grad()
def _symmetric_dSDT(net, x, y, seq, beta, K):
    """compute_dSDT for symmetric nudging: s^+beta and s^-beta, K steps each from seq; step k's
    processes are the one-sided ones' differences between the two phases, over 2 beta."""
    B, L, P = x.shape[0], net.n_weight_layers, net.param_list()

    def trajectory(b):  # copies: on the fast path record sees reused buffers
        out = [seq]
        net.nudged_phase(x, seq, y, beta=b, K=K, P=P, record=lambda k, a, s_new: out.append(net.clone_state(s_new)))
        return out

    plus, minus = trajectory(beta), trajectory(-beta)
    dS = [torch.zeros(K, *t.shape[1:], dtype=t.dtype, device=t.device) for t in net.neurons(seq)]
    DT = [torch.zeros(K, *P[2 * l].shape, dtype=P[0].dtype, device=P[0].device) for l in range(L)]
    for k in range(K):
        for n in range(net.ns):
            inc = (plus[k + 1][n] - plus[k][n]) - (minus[k + 1][n] - minus[k][n])
            if net.clamp:
                hit = (plus[k + 1][n] == 0) | (plus[k + 1][n] == 1) | (minus[k + 1][n] == 0) | (minus[k + 1][n] == 1)
                inc = torch.where(hit, torch.zeros_like(inc), inc)
            dS[n][k] = -inc.sum(0) / (2 * beta * net.dt * B)
        Hp, Hm = net.hebbian(x, plus[k + 1]), net.hebbian(x, minus[k + 1])
        for l in range(L):
            DT[l][k] = -(Hp[2 * l] - Hm[2 * l]) / (2 * beta * B)
    if net.layered:
        for n in range(net.ns):
            dS[n][:n] = 0
    return dS, DT, plus[-1]


def compute_nSdSDT(net, x, y, nudging="one-sided", sign=1):
    """All four GDU processes of one batch: nS, dS (neurons), NT, DT (synapses, cumulated); the
    BPTT ones from one pass (compute_NT), the EP ones from the same free state (compute_dSDT)."""
    NT, nS, seq = compute_NT(net, x, y, with_nS=True)
    dS, DT, _ = compute_dSDT(net, x, y, seq, nudging=nudging, sign=sign)
    return nS, dS, NT, DT


def receipe(net, batches, log=print, nudging="one-sided", signs=None):
    """Sign agreement of EP (summed over Kmax nudged steps) and truncated BPTT (last Kmax
    transitions), per weight layer, over the given batches (one trial each; signs: the random-sign
    nudging's sign per trial)."""
    names = net.synapse_names
    per_trial = []
    for t, (x, y) in enumerate(batches):
        _, _, NT, DT = compute_nSdSDT(net, x, y, nudging, signs[t] if signs else 1)
        rows = [metrics.sign_agreement(NT[l][-1].cpu().numpy(), DT[l][-1].cpu().numpy())
                for l in range(len(names))]
        trial = {"same_sign_total": [a + z for a, z in rows], "same_sign": [a for a, _ in rows],
                 "both_zero": [z for _, z in rows]}
        per_trial.append(trial)
        log(f"trial {t + 1:2d}: same sign (total) " +
            "  ".join(f"{n}: {v:6.2f}%" for n, v in zip(names, trial["same_sign_total"])))
    keys = ["same_sign_total", "same_sign", "both_zero"]
    mean = {k: np.mean([tr[k] for tr in per_trial], 0).tolist() for k in keys}
    std = {k: np.std([tr[k] for tr in per_trial], 0).tolist() for k in keys}
    log(f"{'layer':>10} {'same sign (total)':>22} {'same sign':>18} {'both zero':>18}")
    for i, n in enumerate(names):
        log(f"{n:>10} " + " ".join(f"{mean[k][i]:9.2f} +- {std[k][i]:5.2f}%" for k in keys))
    return {"layer_names": names, "trials": len(per_trial), "per_trial": per_trial, "mean": mean, "std": std}


def set_seed(seed):
    """Seeds python, numpy and torch (initial weights; the batches of plotcurves and receipe).
    Training itself draws no random numbers: its data order is epoch_order(seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
