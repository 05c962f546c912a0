"""The note-state CRF computed the fast way: it exploits the note grammar of :mod:`heads.note_states`.

:class:`NoteChainCRF` has exactly the parameters and the model of a :class:`heads.crf.LinearChainCRF`
whose ``allowed`` mask is :meth:`heads.note_states.NoteStates.allowed` (same ``log Z``, same Viterbi
path, same marginals: ``tests/test_note_crf.py`` checks it against the dense class), but it never
touches the ``S x S`` transition matrix as a whole:

* internally the states are reordered as ``[silence, onset_0 .. onset_{P-1}, sustain_0 ..
  sustain_{P-1}]``, so the *free* states (silence and the onsets, which any state may precede) are
  the first ``1 + P`` columns and the *chained* states (sustain ``k``, reachable only from
  ``onset_k`` and ``sustain_k``) the last ``P``;
* one frame of the forward algorithm or of Viterbi is a ``[B, S] x [S, 1 + P]`` product (or max-plus
  product) for the free columns and two element-wise terms for the sustain columns: about half the
  work of the dense ``[B, S] x [S, S]`` step, and no ``[B, S, S]`` intermediate for Viterbi;
* the log-likelihood's gradient is computed by hand (forward-backward: ``d log Z / d E = marginals``,
  ``d log Z / d transitions = expected transition counts``) instead of by autograd through ``T``
  recursion steps, so training keeps no per-frame graph: the backward pass is one backward
  recursion and two matrix products.

The forward-backward runs in scaled probability space in float64 (each frame's alpha is
normalised to sum 1 and the log of the scale is accumulated), which is exact up to float64
round-off; Viterbi runs in log space in the emissions' dtype and renormalises every frame.

Shapes: ``emissions`` ``[B, T, S]`` with ``S = 1 + 2P`` in the note-state order of
:class:`~heads.note_states.NoteStates` (silence 0, onset_k ``1 + 2k``, sustain_k ``2 + 2k``), ``mask``
bool ``[B, T]`` right-padded (valid frames first). Several songs of different lengths are decoded
in one call by padding them into one batch.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from heads.crf import LinearChainCRF, advance, backtrack
from heads.note_states import NoteStates


_BLAS = None


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """Run the per-frame recursions on one CPU thread (torch's and numpy's BLAS). Their arrays are
    tiny ([B, S]), so splitting them over threads only adds wake-ups, and idle threads spinning
    beside them slow them down: on a loaded 2-core machine one torch nll + backward of 16 x 250
    frames took 20 s with torch's default threads and 0.1 s with one."""
    global _BLAS
    if device.type != "cpu":
        yield
        return
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _BLAS.limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(n)


def _order(num_pitches: int) -> torch.Tensor:
    """Permutation ``perm`` (long ``[S]``): internal state ``i`` is note state ``perm[i]``
    (silence, then every onset, then every sustain)."""
    P = num_pitches
    return torch.cat([torch.zeros(1, dtype=torch.long), 1 + 2 * torch.arange(P), 2 + 2 * torch.arange(P)])


class _Chain:
    """The CRF's scores in the internal order.

    Log space, in ``dtype`` on the parameters' device (for Viterbi): ``log_free`` ``[S, 1 + P]``
    (scores into the free columns), ``log_on_sus`` / ``log_sus_sus`` ``[P]`` (``onset_k -> sustain_k``
    and ``sustain_k -> sustain_k``), ``log_start``, ``log_end`` ``[S]``.

    Scaled probability space, float64 numpy (for the forward-backward): ``free``, ``on_sus``,
    ``sus_sus`` = exp(score - ``shift``) with ``shift`` the largest allowed transition score, and
    ``start``/``end`` = exp(score - ``start_shift``/``end_shift``), so all stay within float range.
    """

    def __init__(self, trans: torch.Tensor, start: torch.Tensor, end: torch.Tensor, P: int, perm: torch.Tensor,
                 dtype=torch.float64):
        t = trans.detach()[perm][:, perm]
        k = torch.arange(P, device=t.device)
        self.P = P
        self.log_free = t[:, :1 + P].to(dtype)
        self.log_on_sus = t[1 + k, 1 + P + k].to(dtype)
        self.log_sus_sus = t[1 + P + k, 1 + P + k].to(dtype)
        self.log_start = start.detach()[perm].to(dtype)
        self.log_end = end.detach()[perm].to(dtype)
        t64 = t.double().cpu().numpy()
        kk = np.arange(P)
        free, on_sus, sus_sus = t64[:, :1 + P], t64[1 + kk, 1 + P + kk], t64[1 + P + kk, 1 + P + kk]
        self.shift = float(max(free.max(), on_sus.max(), sus_sus.max()))
        self.free = np.exp(free - self.shift)
        self.free_t = np.ascontiguousarray(self.free.T)
        self.on_sus = np.exp(on_sus - self.shift)
        self.sus_sus = np.exp(sus_sus - self.shift)
        # the sustain columns as one [2P, P] product of the onset and sustain states: two entries per
        # column (onset_k and sustain_k -> sustain_k), so one BLAS call replaces three element-wise ops
        self.into_sus = np.zeros((2 * P, P))
        self.into_sus[kk, kk] = self.on_sus
        self.into_sus[P + kk, kk] = self.sus_sus
        self.into_sus_t = np.ascontiguousarray(self.into_sus.T)
        st = start.detach()[perm].double().cpu().numpy()
        en = end.detach()[perm].double().cpu().numpy()
        self.start_shift, self.end_shift = float(st.max()), float(en.max())
        self.start, self.end = np.exp(st - self.start_shift), np.exp(en - self.end_shift)
        self._cast = {}

    def as_dtype(self, dtype) -> "_Chain":
        """The same chain with its probability-space arrays in ``dtype`` (cached)."""
        dtype = np.dtype(dtype)
        if dtype == np.float64:
            return self
        if dtype not in self._cast:
            other = object.__new__(_Chain)
            other.__dict__.update(self.__dict__)
            for name in ("free", "free_t", "into_sus", "into_sus_t", "start", "end", "on_sus", "sus_sus"):
                setattr(other, name, getattr(self, name).astype(dtype))
            other._cast = {}
            self._cast[dtype] = other
        return self._cast[dtype]

    def step(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out = a M`` for a ``[B, S]`` batch of row vectors (sum over the previous state)."""
        P = self.P
        np.matmul(a, self.free, out=out[:, :1 + P])
        np.matmul(a[:, 1:], self.into_sus, out=out[:, 1 + P:])
        return out

    def step_back(self, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out = M v`` for a ``[B, S]`` batch (sum over the next state)."""
        P = self.P
        np.matmul(v[:, :1 + P], self.free_t, out=out)
        out[:, 1:] += v[:, 1 + P:] @ self.into_sus_t
        return out


#: A float32 forward pass whose per-frame scale falls below this is redone in float64.
_RESCALE_FLOOR = 1e-30
#: Alphas are renormalised every this many frames (and at the last): in between they only shrink
#: (every factor is <= 1), by much less than float32's range in the cases seen; the scales of the
#: frames in between are 1. Any choice of scales gives the same log Z and marginals.
_RESCALE_EVERY = 4


def _on_one_thread(fn):
    """Run an autograd Function's forward/backward on one thread (see :func:`_one_thread`): a BLAS
    thread pool woken by its numpy work would keep spinning beside torch's next operations."""
    def wrapped(*args):
        with _one_thread(torch.device("cpu")):
            return fn(*args)
    return staticmethod(wrapped)


def _forward_backward(E: np.ndarray, mask: np.ndarray, chain: _Chain, need_grad: bool):
    """Scaled forward(-backward) in the internal order, numpy on the CPU (callers run it under
    :func:`_one_thread`).

    The per-frame arrays are tiny ([B, S]): numpy runs such a step with a fraction of torch's
    per-operation overhead (about half the time of the same loop in torch on one CPU thread), and
    on a GPU the ~10 kernel launches per frame would cost more than the arithmetic. So the
    recursions run here whatever the device, and only their inputs and results move.

    Runs in the dtype of ``E``: float64, or float32 (about twice as fast; a batch that would
    underflow there is redone in float64, see ``_RESCALE_FLOOR``, and so is one whose backward pass
    leaves float32's range). ``log Z`` is summed in float64.

    E ``[B, T, S]`` (internal order), mask bool ``[B, T]``. Returns ``(log_z [B] float64, grads)``;
    ``grads`` is None unless ``need_grad``, else what :class:`_NoteLogZ` needs for ``d log Z``:
    the marginals ``[T, B, S]`` (``d log Z / d E``, time first), the scaled alphas of frames ``0..T-2`` and the
    ``v_t = e_t * beta_hat_t / c_t`` of frames ``1..T-1`` (``[T-1, B, S]`` each: their products give the
    expected transition counts), the marginals of the first frame and the end weights of the last.
    """
    B, T, S = E.shape
    dtype = E.dtype
    chain = chain.as_dtype(dtype)
    valid = mask.T                                                       # [T, B]
    full = valid.all(axis=1)
    emax = E.max(axis=2)                                                 # [B, T]
    e = np.exp(E - emax[:, :, None]).transpose(1, 0, 2).copy()          # [T, B, S] in (0, 1]
    tiny = np.finfo(dtype).tiny
    alphas = np.empty((T, B, S), dtype)
    scales = np.ones((T, B), dtype)
    a = alphas[0]
    np.multiply(chain.start, e[0], out=a)
    scales[0] = np.maximum(a.sum(1), tiny)
    a /= scales[0][:, None]
    for t in range(1, T):
        nxt = chain.step(alphas[t - 1], alphas[t])
        nxt *= e[t]
        if not full[t]:
            keep = valid[t]
            nxt[~keep] = alphas[t - 1][~keep]                            # a padded frame carries alpha
        if t % _RESCALE_EVERY == 0 or t == T - 1:                        # else the scale stays 1
            ct = np.maximum(nxt.sum(1), tiny)
            if not full[t]:
                ct[~keep] = 1.0                                          # a carried alpha keeps its scale
            nxt /= ct[:, None]
            scales[t] = ct
    last = alphas[T - 1]
    c_end = np.maximum((last * chain.end).sum(1), tiny)
    if dtype != np.float64 and (scales.min() < _RESCALE_FLOOR or c_end.min() < _RESCALE_FLOOR):
        # a frame whose reachable states all lie ~70 nats below its best state would underflow in
        # float32: run the batch again in float64 (exact to 708 nats)
        return _forward_backward(E.astype(np.float64), mask, chain, need_grad)
    log_z = (np.log(scales.astype(np.float64)).sum(0) + np.where(valid, emax.T, 0.0).sum(0, dtype=np.float64)
             + chain.shift * (valid[1:].sum(0)) + chain.start_shift + np.log(np.float64(1.0) * c_end)
             + chain.end_shift)
    has = valid[0]
    log_z = np.where(has, log_z, 0.0)
    if not need_grad:
        return log_z, None
    # backward: beta_hat[t-1] = M (e_t * beta_hat[t]) / c_t; gamma = alpha * beta_hat
    betas = np.empty_like(alphas)
    betas[T - 1] = chain.end[None, :] / c_end[:, None]
    vs = np.zeros((max(T - 1, 0), B, S), dtype)
    # beta_hat of a state whose alpha is tiny is huge (their product is a marginal <= 1): with very
    # peaked emissions it can pass float32's range; such a batch is redone in float64 (checked below)
    with np.errstate(over="ignore", invalid="ignore") if dtype != np.float64 else contextlib.nullcontext():
        for t in range(T - 1, 0, -1):
            v = vs[t - 1]
            np.multiply(e[t], betas[t], out=v)
            if t % _RESCALE_EVERY == 0 or t == T - 1:
                v /= scales[t][:, None]
            chain.step_back(v, betas[t - 1])
            if not full[t]:
                keep = valid[t]
                v[~keep] = 0.0
                betas[t - 1][~keep] = betas[t][~keep]                    # a padded frame carries beta
    if dtype != np.float64 and not (np.isfinite(betas).all() and np.isfinite(vs).all()):
        return _forward_backward(E.astype(np.float64), mask, chain, need_grad)
    gamma = alphas * betas                                               # [T, B, S]
    gamma *= (valid & has[None, :])[:, :, None]
    return log_z, {"emissions": gamma, "alphas": alphas[:-1], "vs": vs, "has": has, "start": gamma[0],
                   "last": (last * chain.end / c_end[:, None]) * has[:, None]}


class _NoteLogZ(torch.autograd.Function):
    """log Z of the note CRF with a hand-written backward (marginals and expected counts)."""

    @_on_one_thread
    def forward(ctx, emissions, trans, start, end, mask, P, perm):
        chain = _Chain(trans, start, end, P, perm)
        work = torch.float64 if emissions.dtype == torch.float64 else torch.float32
        E = emissions.detach()[:, :, perm].to(work).cpu().numpy()
        need = any(ctx.needs_input_grad[:4])
        log_z, grads = _forward_backward(E, mask.cpu().numpy(), chain, need)
        if need:
            ctx.grads, ctx.chain, ctx.perm = grads, chain, perm
            ctx.dtypes = (emissions.dtype, trans.dtype)
        return torch.from_numpy(log_z).to(device=emissions.device, dtype=emissions.dtype)

    @_on_one_thread
    def backward(ctx, g):
        grads, chain, P = ctx.grads, ctx.chain, ctx.chain.P
        device = g.device
        perm = ctx.perm.cpu().numpy()
        em_dtype, tr_dtype = ctx.dtypes
        work = grads["emissions"].dtype
        g = (g.detach().double().cpu().numpy() * grads["has"]).astype(work)
        S = 1 + 2 * P
        inv = np.argsort(perm)
        g_em = np.take(grads["emissions"] * g[None, :, None], inv, axis=2)         # [T, B, S]
        same = bool(len(g)) and bool((g == g[0]).all())                    # one weight for every row (sum / mean)
        prev = grads["alphas"] if same else grads["alphas"] * g[None, :, None]    # [T-1, B, S]
        vs = grads["vs"]
        g_t = np.zeros((S, S), work)
        k = np.arange(P)
        if prev.shape[0]:
            a2, v2 = prev.reshape(-1, S), vs.reshape(-1, S)
            g_t[:, :1 + P] = (a2.T @ v2[:, :1 + P]) * chain.free
            g_t[1 + k, 1 + P + k] = (a2[:, 1:1 + P] * v2[:, 1 + P:]).sum(0) * chain.on_sus
            g_t[1 + P + k, 1 + P + k] = (a2[:, 1 + P:] * v2[:, 1 + P:]).sum(0) * chain.sus_sus
            if same:
                g_t *= g[0]
        g_trans = g_t[inv][:, inv]
        g_start = (grads["start"] * g[:, None]).sum(0)[inv]
        g_end = (grads["last"] * g[:, None]).sum(0)[inv]
        ctx.grads = None

        def back(x, dtype):
            return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

        return (torch.from_numpy(g_em).to(device=device, dtype=em_dtype).permute(1, 0, 2), back(g_trans, tr_dtype), back(g_start, tr_dtype), back(g_end, tr_dtype),
                None, None, None)


class NoteChainCRF(LinearChainCRF):
    """Linear-chain CRF over the note states of ``NoteStates(midi_low, midi_high)`` that exploits
    their grammar (see the module docstring). Same parameters and results as
    ``LinearChainCRF(S, NoteStates(...).allowed())``; ``score`` is inherited.

    ``log_partition``/``nll`` are differentiable (hand-written backward); ``marginals`` and
    ``viterbi`` are not (no grad).
    """

    def __init__(self, states: NoteStates):
        super().__init__(states.num_states, states.allowed())
        self.num_pitches = states.num_pitches
        self.register_buffer("perm", _order(states.num_pitches), persistent=False)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log Z`` per row -> ``[B]`` (0 for rows with no valid frame), in the emissions' dtype."""
        mask = self._check(emissions, mask)
        trans, start, end = self._effective(emissions.dtype)
        return _NoteLogZ.apply(emissions, trans, start, end, mask, self.num_pitches, self.perm)

    @torch.no_grad()
    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Posterior ``p(y_t = s | emissions)`` -> ``[B, T, S]`` (0 on padded frames); not differentiable."""
        mask = self._check(emissions, mask)
        trans, start, end = self._effective(torch.float64)
        chain = _Chain(trans, start, end, self.num_pitches, self.perm)
        E = emissions[:, :, self.perm].double().cpu().numpy()
        with _one_thread(torch.device("cpu")):
            _, grads = _forward_backward(E, mask.cpu().numpy(), chain, True)
        inv = np.argsort(self.perm.cpu().numpy())
        marg = np.take(grads["emissions"], inv, axis=2).transpose(1, 0, 2)
        return torch.from_numpy(np.ascontiguousarray(marg)).to(device=emissions.device, dtype=emissions.dtype)

    @torch.no_grad()
    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Most probable path per row -> long ``[B, T]`` (note-state indices; -1 past a row's length).

        Per frame: a max-plus product over the ``1 + P`` free columns and a two-way max for each
        sustain; ``delta`` is renormalised every frame as in :meth:`LinearChainCRF.viterbi`.
        Backpointers are kept as uint8 (``S <= 256``): 1 byte per state and frame.
        """
        mask = self._check(emissions, mask)
        trans, start, end = self._effective(emissions.dtype)
        P, perm = self.num_pitches, self.perm
        chain = _Chain(trans, start, end, P, perm, dtype=emissions.dtype)
        E = emissions[:, :, perm]
        B, T, S = E.shape
        device = E.device
        on_idx = torch.arange(1, 1 + P, device=device).expand(B, P)
        sus_idx = torch.arange(1 + P, S, device=device).expand(B, P)
        identity = torch.arange(S, device=device).expand(B, S)
        pointers = torch.empty(max(T - 1, 0), B, S, dtype=torch.uint8 if S <= 256 else torch.long, device=device)
        full = mask.all(dim=0).tolist()
        with _one_thread(device):
            delta = chain.log_start + E[:, 0]
            delta = delta - delta.max(dim=1, keepdim=True).values
            for t in range(1, T):
                best_free, arg_free = (delta.unsqueeze(2) + chain.log_free).max(dim=1)   # [B, 1 + P]
                from_on = delta[:, 1:1 + P] + chain.log_on_sus
                from_sus = delta[:, 1 + P:] + chain.log_sus_sus
                take_on = from_on >= from_sus
                best = torch.cat([best_free, torch.where(take_on, from_on, from_sus)], dim=1) + E[:, t]
                arg = torch.cat([arg_free, torch.where(take_on, on_idx, sus_idx)], dim=1)
                best = best - best.max(dim=1, keepdim=True).values
                delta = advance(delta, best, arg, pointers, t, mask, full[t], identity)
        path = backtrack(pointers, (delta + chain.log_end).argmax(dim=1))
        out = perm.cpu().numpy()[path]
        return torch.from_numpy(out).to(device).masked_fill(~mask, -1)
