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

from heads.crf import LinearChainCRF
from heads.note_states import NoteStates


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """Run the per-frame recursions on one CPU thread. Their tensors are tiny ([B, S]), so splitting
    them over threads only adds wake-ups: on a loaded 2-core machine one nll + backward of 16 x 250
    frames took 20 s with torch's default threads and 0.1 s with one."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _order(num_pitches: int) -> torch.Tensor:
    """Permutation ``perm`` (long ``[S]``): internal state ``i`` is note state ``perm[i]``
    (silence, then every onset, then every sustain)."""
    P = num_pitches
    return torch.cat([torch.zeros(1, dtype=torch.long), 1 + 2 * torch.arange(P), 2 + 2 * torch.arange(P)])


class _Chain:
    """The CRF's scores in the internal order, as the recursions use them (float64 unless said).

    ``free``: exp-scores into the free columns ``[S, 1 + P]``; ``on_sus`` / ``sus_sus``: exp-scores
    of ``onset_k -> sustain_k`` and ``sustain_k -> sustain_k`` ``[P]``; all scaled by ``exp(-shift)``
    (``shift`` = the largest allowed transition score) so they stay within float range. ``log_*`` are
    the same in log space in ``dtype`` (for Viterbi).
    """

    def __init__(self, trans: torch.Tensor, start: torch.Tensor, end: torch.Tensor, P: int, perm: torch.Tensor,
                 dtype=torch.float64):
        t = trans[perm][:, perm]
        k = torch.arange(P, device=t.device)
        self.P = P
        self.log_free = t[:, :1 + P].to(dtype)
        self.log_on_sus = t[1 + k, 1 + P + k].to(dtype)
        self.log_sus_sus = t[1 + P + k, 1 + P + k].to(dtype)
        self.log_start = start[perm].to(dtype)
        self.log_end = end[perm].to(dtype)
        t64 = t.double()
        self.shift = torch.maximum(t64[:, :1 + P].max(), torch.maximum(t64[1 + k, 1 + P + k].max(),
                                                                       t64[1 + P + k, 1 + P + k].max()))
        self.free = torch.exp(t64[:, :1 + P] - self.shift)
        self.on_sus = torch.exp(t64[1 + k, 1 + P + k] - self.shift)
        self.sus_sus = torch.exp(t64[1 + P + k, 1 + P + k] - self.shift)

    def step(self, a: torch.Tensor) -> torch.Tensor:
        """``a M`` for a ``[B, S]`` row vector batch (sum over the previous state) -> ``[B, S]``."""
        P = self.P
        out = torch.empty_like(a)
        torch.matmul(a, self.free, out=out[:, :1 + P])
        torch.addcmul(a[:, 1 + P:] * self.sus_sus, a[:, 1:1 + P], self.on_sus, out=out[:, 1 + P:])
        return out

    def step_back(self, v: torch.Tensor) -> torch.Tensor:
        """``M v`` for a ``[B, S]`` batch (sum over the next state) -> ``[B, S]``."""
        P = self.P
        out = v[:, :1 + P] @ self.free.T
        out[:, 1:1 + P] += self.on_sus * v[:, 1 + P:]
        out[:, 1 + P:] += self.sus_sus * v[:, 1 + P:]
        return out


def _forward_backward(E: torch.Tensor, mask: torch.Tensor, chain: _Chain, need_grad: bool):
    """Scaled forward(-backward) in the internal order.

    E float64 ``[B, T, S]`` (internal order), mask bool ``[B, T]``. Returns ``(log_z [B], grads)``;
    ``grads`` is None unless ``need_grad``, else a dict of ``d log Z`` with respect to the emissions
    (the marginals, ``[B, T, S]``), the free transition columns ``[S, 1 + P]``, the two sustain
    diagonals ``[P]``, start ``[S]`` and end ``[S]``, per row (emissions) or summed over rows
    (the rest) with each row weighted by ``row_weight`` set later (see :class:`_NoteLogZ`).
    """
    with _one_thread(E.device):
        return _recursions(E, mask, chain, need_grad)


def _recursions(E: torch.Tensor, mask: torch.Tensor, chain: "_Chain", need_grad: bool):
    B, T, S = E.shape
    emax = E.max(dim=2, keepdim=True).values
    e = torch.exp(E - emax)                                            # [B, T, S] in (0, 1]
    tiny = torch.finfo(torch.float64).tiny
    s_shift = chain.log_start.max().double()
    e_shift = chain.log_end.max().double()
    start = torch.exp(chain.log_start.double() - s_shift)
    end = torch.exp(chain.log_end.double() - e_shift)
    full = mask.all(dim=0).tolist()
    a = start * e[:, 0]
    c = a.sum(1).clamp(min=tiny)
    a = a / c[:, None]
    log_z = torch.log(c) + s_shift + emax[:, 0, 0]
    if need_grad:
        alphas = torch.empty(T, B, S, dtype=torch.float64, device=E.device)
        scales = torch.ones(T, B, dtype=torch.float64, device=E.device)
        alphas[0], scales[0] = a, c
    step_shift = chain.shift + emax[:, 1:, 0]                          # [B, T-1]
    for t in range(1, T):
        nxt = chain.step(a) * e[:, t]
        ct = nxt.sum(1).clamp(min=tiny)
        if full[t]:
            a = nxt / ct[:, None]
            log_z = log_z + torch.log(ct) + step_shift[:, t - 1]
        else:
            valid = mask[:, t]
            a = torch.where(valid[:, None], nxt / ct[:, None], a)
            ct = torch.where(valid, ct, torch.ones_like(ct))
            log_z = log_z + torch.where(valid, torch.log(ct) + step_shift[:, t - 1], torch.zeros_like(ct))
        if need_grad:
            alphas[t], scales[t] = a, ct
    c_end = (a * end).sum(1).clamp(min=tiny)
    log_z = log_z + torch.log(c_end) + e_shift
    has = mask[:, 0]
    log_z = torch.where(has, log_z, torch.zeros_like(log_z))
    if not need_grad:
        return log_z, None
    # backward recursion: beta_hat[t] = (M (e_{t+1} * beta_hat[t+1])) / c_{t+1}; gamma = alpha * beta_hat
    betas = torch.empty_like(alphas)
    beta = (end / c_end[:, None]).expand(B, S).clone() if B else torch.empty(0, S, dtype=torch.float64)
    betas[T - 1] = beta
    vs = torch.zeros(max(T - 1, 0), B, S, dtype=torch.float64, device=E.device)   # e_t * beta_t / c_t
    for t in range(T - 1, 0, -1):
        v = e[:, t] * beta / scales[t][:, None]
        if full[t]:
            vs[t - 1] = v
            beta = chain.step_back(v)
        else:
            valid = mask[:, t:t + 1]
            vs[t - 1] = torch.where(valid, v, torch.zeros_like(v))
            beta = torch.where(valid, chain.step_back(v), beta)
        betas[t - 1] = beta
    gamma = (alphas * betas).permute(1, 0, 2) * mask[:, :, None]         # [B, T, S]
    gamma = gamma * has[:, None, None]
    # expected transition counts, per row (weighted later): sum_t alpha_{t-1}(i) M(i, j) v_t(j)
    prev = alphas[:-1]                                                   # [T-1, B, S]
    grads = {"emissions": gamma, "alphas": prev, "vs": vs, "has": has,
             "start": gamma[:, 0], "last": (a * end / c_end[:, None]) * has[:, None]}
    return log_z, grads


class _NoteLogZ(torch.autograd.Function):
    """log Z of the note CRF with a hand-written backward (marginals and expected counts)."""

    @staticmethod
    def forward(ctx, emissions, trans, start, end, mask, P, perm):
        chain = _Chain(trans.detach(), start.detach(), end.detach(), P, perm)
        E = emissions.detach().double()[:, :, perm]
        need = any(ctx.needs_input_grad[:4])
        log_z, grads = _forward_backward(E, mask, chain, need)
        if need:
            ctx.grads, ctx.chain, ctx.perm = grads, chain, perm
            ctx.dtypes = (emissions.dtype, trans.dtype)
        return log_z.to(emissions.dtype)

    @staticmethod
    def backward(ctx, g):
        grads, chain, perm, P = ctx.grads, ctx.chain, ctx.perm, ctx.chain.P
        em_dtype, tr_dtype = ctx.dtypes
        g = g.double() * grads["has"]
        S = 1 + 2 * P
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(S, device=perm.device)
        g_em = (grads["emissions"] * g[:, None, None])[:, :, inv].to(em_dtype)
        prev = grads["alphas"] * g[None, :, None]                            # [T-1, B, S]
        vs = grads["vs"]
        if prev.shape[0]:
            a2 = prev.reshape(-1, S)
            v2 = vs.reshape(-1, S)
            free = (a2.T @ v2[:, :1 + P]) * chain.free                      # [S, 1 + P]
            on_sus = (a2[:, 1:1 + P] * v2[:, 1 + P:]).sum(0) * chain.on_sus
            sus_sus = (a2[:, 1 + P:] * v2[:, 1 + P:]).sum(0) * chain.sus_sus
        else:
            free = torch.zeros(S, 1 + P, dtype=torch.float64, device=g.device)
            on_sus = sus_sus = torch.zeros(P, dtype=torch.float64, device=g.device)
        g_t = torch.zeros(S, S, dtype=torch.float64, device=g.device)
        g_t[:, :1 + P] = free
        k = torch.arange(P, device=g.device)
        g_t[1 + k, 1 + P + k] = on_sus
        g_t[1 + P + k, 1 + P + k] = sus_sus
        g_trans = torch.zeros_like(g_t)
        g_trans[perm[:, None], perm[None, :]] = g_t
        g_start = torch.zeros(S, dtype=torch.float64, device=g.device)
        g_start[perm] = (grads["start"] * g[:, None]).sum(0)
        g_end = torch.zeros(S, dtype=torch.float64, device=g.device)
        g_end[perm] = (grads["last"] * g[:, None]).sum(0)
        ctx.grads = None
        return g_em, g_trans.to(tr_dtype), g_start.to(tr_dtype), g_end.to(tr_dtype), None, None, None


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
        _, grads = _forward_backward(emissions.double()[:, :, self.perm], mask, chain, True)
        inv = torch.argsort(self.perm)
        return grads["emissions"][:, :, inv].to(emissions.dtype)

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
                if full[t]:
                    delta = best
                    pointers[t - 1] = arg
                else:
                    step = mask[:, t:t + 1]
                    delta = torch.where(step, best, delta)
                    pointers[t - 1] = torch.where(step, arg, identity)
        # backtrack on the CPU with numpy: T tiny gathers are much cheaper there than as torch ops
        ptr = pointers.cpu().numpy()
        rows = np.arange(B)
        path = np.empty((B, T), dtype=np.int64)
        cur = (delta + chain.log_end).argmax(dim=1).cpu().numpy()
        path[:, T - 1] = cur
        for t in range(T - 1, 0, -1):
            cur = ptr[t - 1, rows, cur]
            path[:, t - 1] = cur
        out = perm.cpu().numpy()[path]
        return torch.from_numpy(out).to(device).masked_fill(~mask, -1)
