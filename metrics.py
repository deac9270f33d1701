"""GDU metrics of the paper's processes, numpy only: the BPTT gradients (nS, NT) against the EP
updates (dS, DT) as relative RMSE, cosines and sign agreement.  Used by the trainer (receipe, the
plotcurves summary) and by plotFunctions.py, which runs inside a result folder with numpy and
matplotlib only: results.createPath copies this file there beside it.

Conventions of the paper:
 * nS[k] is the BPTT gradient w.r.t. a neuron layer at time T-k, dS[k] the EP neuron update at
   nudged step k with its sign flipped, so the Gradient-Descending-Updates (GDU) property reads
   dS ~= nS.
 * NT[k], DT[k] are the *cumulated* weight gradient / update over k+1 steps; their first
   differences nT, dT are the instantaneous processes.
"""
import numpy as np

def compute_nTdT(NT, DT, zero_first=True):
    """First differences of the cumulated weight processes (one array per layer).

    nT[k] = NT[k] - NT[k-1] for k >= 1. The original code sets nT[0] = dT[0] = 0
    (zero_first=True, used for the plots); zero_first=False keeps the true
    first increment nT[0] = NT[0], used for per-step cosine metrics.
    """
    def diff(X):  # in the input's dtype: EB-3h holds ~0.7 GB per process in float32
        X = np.asarray(X)
        first = np.zeros_like(X[:1]) if zero_first else X[:1]
        return np.concatenate([first, X[1:] - X[:-1]], axis=0)
    return [diff(X) for X in NT], [diff(X) for X in DT]


def rmse_layer(a, b):
    """Relative RMSE between a BPTT series a and an EP series b, shape (Kmax, ...).

    Per component c: r_c = sqrt(sum_k (a-b)^2 / max(sum_k a^2, sum_k b^2)),
    normalised so that processes of any scale compare (r_c = 0 if both are
    identically zero). Returns the mean over components, as in the paper's
    histograms.
    """
    a = np.asarray(a).reshape(len(a), -1)
    b = np.asarray(b).reshape(len(b), -1)
    if a.shape[1] == 0:
        return 0.0
    total, step = 0.0, max(1, (1 << 22) // max(1, len(a)))  # float64 in chunks: bounded memory
    for i in range(0, a.shape[1], step):
        x, y = a[:, i:i + step].astype(np.float64), b[:, i:i + step].astype(np.float64)
        num = ((x - y) ** 2).sum(0)
        den = np.maximum((x ** 2).sum(0), (y ** 2).sum(0))
        nz = den > 0
        total += np.sqrt(num[nz] / den[nz]).sum()
    return float(total / a.shape[1])


def compute_Hist(nS, dS, NT, DT):
    """RMSE per layer: neurons on instantaneous nS/dS, synapses on the
    *cumulated* NT/DT (the paper's convention for Fig. 3/4 histograms)."""
    return ([rmse_layer(a, b) for a, b in zip(nS, dS)],
            [rmse_layer(a, b) for a, b in zip(NT, DT)])


def cosine(a, b):
    """Cosine similarity of flattened arrays; 1.0 if both are zero, 0.0 if one is."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


class _Increments:
    """The true instantaneous increments of a cumulated process X (X[0], X[1]-X[0], ...), made one
    at a time: EB-3h's full increment arrays would double the memory."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, k):
        return self.X[k] - self.X[k - 1] if k else self.X[0]


def step_cosines(a_steps, b_steps, rel=1e-6):
    """Mean over steps k of cosine(a_k, b_k), skipping the steps where neither process carries
    signal (norm below rel x the largest norm over steps).  Why: in layered nets many steps are
    exactly zero for BPTT (a layer cannot reach the output yet, or the bipartite parity of the
    prototypical dynamics) while EP leaves round-off there; a cosine of noise against an exact zero
    would count as 0 and say nothing about the GDU property.  Returns 1.0 if no step has signal."""
    na = np.array([np.linalg.norm(np.asarray(x, dtype=np.float64)) for x in a_steps])
    nb = np.array([np.linalg.norm(np.asarray(y, dtype=np.float64)) for y in b_steps])
    top = max(na.max(initial=0.0), nb.max(initial=0.0))
    keep = [k for k in range(len(na)) if max(na[k], nb[k]) > rel * top]
    return float(np.mean([cosine(a_steps[k], b_steps[k]) for k in keep])) if keep else 1.0


def process_cosine(a_steps, b_steps):
    """Cosine of the whole instantaneous processes (all steps and components at once): each step
    weighs by its size, unlike the mean of per-step cosines."""
    dot = na = nb = 0.0
    for k in range(len(a_steps)):
        x = np.asarray(a_steps[k], dtype=np.float64).ravel()
        y = np.asarray(b_steps[k], dtype=np.float64).ravel()
        dot, na, nb = dot + x @ y, na + x @ x, nb + y @ y
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(dot / np.sqrt(na * nb), -1.0, 1.0))


def cosine_total_and_steps(a_inst, b_inst):
    """(cosine of the summed processes, mean over the steps with signal of the per-step cosines)."""
    a_inst, b_inst = np.asarray(a_inst), np.asarray(b_inst)
    return cosine(a_inst.sum(0), b_inst.sum(0)), step_cosines(a_inst, b_inst)


def sign_agreement(a, b):
    """(% entries both non-zero with the same sign, % entries both exactly zero)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size == 0:
        return 0.0, 0.0
    same = (a != 0) & (b != 0) & (np.sign(a) == np.sign(b))
    zero = (a == 0) & (b == 0)
    return float(100.0 * same.mean()), float(100.0 * zero.mean())


def gdu_metrics(nS, dS, NT, DT, neuron_names, synapse_names):
    """JSON-ready dict of GDU metrics per layer (plain Python floats).

    Neurons: all metrics on instantaneous nS/dS, sign agreement on sum_k.
    Synapses: rmse on cumulated NT/DT, cos_total and sign on NT[-1] vs DT[-1]
    (the full truncated-BPTT gradient vs the full EP update), cos_steps on the
    true instantaneous increments (zero_first=False).
    """
    out = {"neurons": {}, "synapses": {}}
    for name, a, b in zip(neuron_names, nS, dS):
        tot, steps = cosine_total_and_steps(a, b)
        same, zero = sign_agreement(np.sum(a, 0), np.sum(b, 0))
        out["neurons"][name] = {"rmse": rmse_layer(a, b), "cos_total": tot, "cos_steps": steps,
                                "cos_process": process_cosine(a, b), "sign_agree": same + zero}
    for name, A, B in zip(synapse_names, NT, DT):
        same, zero = sign_agreement(A[-1], B[-1])
        # per-step cosines on the true increments (zero_first=False), one step at a time
        out["synapses"][name] = {"rmse": rmse_layer(A, B), "cos_total": cosine(A[-1], B[-1]),
                                 "cos_steps": step_cosines(_Increments(A), _Increments(B)),
                                 "cos_process": process_cosine(_Increments(A), _Increments(B)),
                                 "sign_agree": same + zero}
    return out
