"""Linear-chain conditional random field (CRF) over a small discrete state space.

The model scores a state path ``y_0 .. y_{L-1}`` for one sequence of per-frame emissions ``E`` as

    score(y) = start[y_0] + sum_t E[t, y_t] + sum_{t>=1} transitions[y_{t-1}, y_t] + end[y_{L-1}]

and defines ``p(y | E) = exp(score(y)) / Z`` with ``log Z = logsumexp_y score(y)`` (the forward
algorithm). Everything is computed in log space with ``torch.logsumexp`` and vectorised over the batch;
only the time axis is looped over.

Structural constraints
----------------------
``allowed[i, j]`` (bool ``[S, S]``) says whether the transition ``i -> j`` is possible, and
``allowed_start[j]`` (bool ``[S]``) whether a sequence may start in ``j``. Disallowed entries are not
learned: the effective scores are the learned parameters with disallowed entries replaced by the fixed
constant :data:`NEG` (``-1e4``), via ``masked_fill``. This keeps every quantity finite (no ``-inf`` and
thus no ``nan`` in gradients); the replaced parameter entries receive exactly zero gradient. A
disallowed path is ``1e4`` nats worse than an allowed one, so it carries ``exp(-1e4) == 0`` probability
in float32/float64 and is never chosen by Viterbi, as long as emissions differ by much less than 1e4.

Masks
-----
``mask`` (bool ``[B, T]``) marks valid frames and must be right-padded (valid frames first). Rows with
no valid frame are tolerated: their score, log-partition and nll are 0, their Viterbi path is all -1
and their marginals are all 0. Tags at padded positions are ignored (any value, e.g. -1, is fine).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

NEG = -1.0e4
"""Fixed score of a disallowed transition / start state (finite, so gradients stay finite)."""

_REDUCTIONS = ("mean", "sum", "none")


def advance(delta, best, arg, pointers, t: int, mask, full: bool, identity):
    """One Viterbi frame ``t`` (>= 1): store the backpointers ``arg`` [B, S] in ``pointers[t - 1]`` and
    return the new ``delta`` (``best`` [B, S]). A row whose frame ``t`` is padding keeps its delta
    and gets the identity pointer, so backtracking passes through it unchanged."""
    if full:
        pointers[t - 1] = arg
        return best
    step = mask[:, t:t + 1]
    pointers[t - 1] = torch.where(step, arg, identity)
    return torch.where(step, best, delta)


def backtrack(pointers: torch.Tensor, last: torch.Tensor) -> np.ndarray:
    """Viterbi paths from backpointers: ``pointers`` ``[T-1, B, S]`` (the best previous state of each
    state at frames 1..T-1), ``last`` ``[B]`` (the best final state) -> int64 ``[B, T]``.
    Runs on the CPU with numpy: T tiny gathers are much cheaper there than as torch ops."""
    ptr = pointers.cpu().numpy()
    B = last.shape[0]
    T = ptr.shape[0] + 1
    rows = np.arange(B)
    path = np.empty((B, T), dtype=np.int64)
    cur = last.cpu().numpy().astype(np.int64)
    path[:, T - 1] = cur
    for t in range(T - 1, 0, -1):
        cur = ptr[t - 1, rows, cur]
        path[:, t - 1] = cur
    return path


class LinearChainCRF(nn.Module):
    """Linear-chain CRF over ``num_states`` states, vectorised over the batch (log space).

    Parameters: ``transitions`` ``[S, S]`` (score of moving from state ``i`` to state ``j``), ``start``
    ``[S]`` and ``end`` ``[S]``, all initialised to zero. Optional ``allowed`` (bool ``[S, S]``) and
    ``allowed_start`` (bool ``[S]``) masks fix disallowed transitions / start states at :data:`NEG`
    (not learned). The masks are stored as buffers and follow the module across devices.

    All methods take ``emissions`` ``[B, T, S]`` (any float dtype; the parameters are cast to it) and a
    right-padded bool ``mask`` ``[B, T]``; ``T`` may be 1.
    """

    def __init__(self, num_states: int, allowed: torch.Tensor | None = None,
                 allowed_start: torch.Tensor | None = None):
        super().__init__()
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        self.num_states = int(num_states)
        S = self.num_states
        self.transitions = nn.Parameter(torch.zeros(S, S))
        self.start = nn.Parameter(torch.zeros(S))
        self.end = nn.Parameter(torch.zeros(S))
        if allowed is None:
            allowed = torch.ones(S, S, dtype=torch.bool)
        if allowed_start is None:
            allowed_start = torch.ones(S, dtype=torch.bool)
        allowed = torch.as_tensor(allowed, dtype=torch.bool)
        allowed_start = torch.as_tensor(allowed_start, dtype=torch.bool)
        if allowed.shape != (S, S):
            raise ValueError(f"allowed must have shape {(S, S)}, got {tuple(allowed.shape)}")
        if allowed_start.shape != (S,):
            raise ValueError(f"allowed_start must have shape {(S,)}, got {tuple(allowed_start.shape)}")
        if not bool(allowed_start.any()):
            raise ValueError("allowed_start allows no state")
        self.register_buffer("allowed", allowed.clone())
        self.register_buffer("allowed_start", allowed_start.clone())

    def extra_repr(self) -> str:
        return (f"num_states={self.num_states}, allowed_transitions={int(self.allowed.sum())}/"
                f"{self.num_states ** 2}")

    # ----------------------------------------------------------------------------------- helpers
    def _effective(self, dtype: torch.dtype):
        """Transition / start / end scores in ``dtype`` with disallowed entries fixed at NEG."""
        trans = self.transitions.to(dtype).masked_fill(~self.allowed, NEG)
        start = self.start.to(dtype).masked_fill(~self.allowed_start, NEG)
        return trans, start, self.end.to(dtype)

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor):
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_states:
            raise ValueError(f"emissions must be [B, T, {self.num_states}], got {tuple(emissions.shape)}")
        if mask is None:
            mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        mask = mask.to(device=emissions.device, dtype=torch.bool)
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask must be {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}")
        if emissions.shape[1] == 0:
            raise ValueError("emissions have no frames (T == 0)")
        return mask

    def _forward_alphas(self, emissions, mask, keep_all: bool):
        """Forward recursion. Returns (final alpha [B, S], list of per-frame alphas or None).

        At padded frames alpha is carried over unchanged, so the final alpha is the one at each
        row's last valid frame.
        """
        trans, start, _ = self._effective(emissions.dtype)
        # logsumexp_i(alpha_i + trans_ij) as a matrix product in scaled exp space: with
        # m = max_i alpha_i, it is m + log(exp(alpha - m) @ exp(trans - c)) + c, c = max trans.
        # One [B, S] x [S, S] matmul per frame instead of a [B, S, S] logsumexp (about 10x faster
        # for the 97-state note CRF). Disallowed entries (NEG) give exp(...) = 0 exactly; a state no
        # path reaches gets log(TINY) relative to the best state instead of about NEG: both
        # contribute nothing measurable to log Z.
        # The matmul runs in float64: a state whose predecessors all lie more than log(1/tiny) below
        # the best state is floored there, which is ~87 nats in float32 (reachable with large
        # emissions) but ~708 nats in float64.
        out_dtype = emissions.dtype
        c = trans.max().detach()
        exp_trans = torch.exp((trans - c).double())
        tiny = torch.finfo(torch.float64).tiny
        alpha = start + emissions[:, 0]
        alphas = [alpha] if keep_all else None
        for t in range(1, emissions.shape[1]):
            m = alpha.max(dim=1, keepdim=True).values.detach()
            mixed = torch.exp((alpha - m).double()) @ exp_trans
            nxt = m + c + torch.log(torch.clamp(mixed, min=tiny)).to(out_dtype) + emissions[:, t]
            alpha = torch.where(mask[:, t:t + 1], nxt, alpha)
            if keep_all:
                alphas.append(alpha)
        return alpha, alphas

    # ------------------------------------------------------------------------------------- API
    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of the path ``tags`` (long ``[B, T]``) for each row -> ``[B]``."""
        mask = self._check(emissions, mask)
        if tags.shape != mask.shape:
            raise ValueError(f"tags must be {tuple(mask.shape)}, got {tuple(tags.shape)}")
        trans, start, end = self._effective(emissions.dtype)
        B, T, _ = emissions.shape
        tags = tags.to(emissions.device).long().masked_fill(~mask, 0)
        m = mask.to(emissions.dtype)
        lengths = mask.sum(1)
        has = lengths > 0

        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)          # [B, T]
        total = (emit * m).sum(1)
        total = total + start[tags[:, 0]] * has.to(emissions.dtype)
        if T > 1:
            pair = trans[tags[:, :-1], tags[:, 1:]]                       # [B, T-1]
            total = total + (pair * m[:, 1:]).sum(1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        total = total + end[last] * has.to(emissions.dtype)
        return total

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log Z`` per row by the forward algorithm -> ``[B]`` (0 for rows with no valid frame)."""
        mask = self._check(emissions, mask)
        _, _, end = self._effective(emissions.dtype)
        alpha, _ = self._forward_alphas(emissions, mask, keep_all=False)
        logz = torch.logsumexp(alpha + end, dim=1)
        return torch.where(mask[:, 0], logz, torch.zeros_like(logz))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
            reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood ``log Z - score(tags)`` of each row's path.

        ``reduction``: ``'none'`` -> ``[B]``; ``'sum'`` -> sum over rows; ``'mean'`` -> mean over the
        ``B`` rows (each row's nll is summed over its frames; there is NO division by the number of
        valid frames, so longer sequences weigh more; divide by ``mask.sum()`` yourself for a
        per-frame loss).
        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        out = self.log_partition(emissions, mask) - self.score(emissions, tags, mask)
        if reduction == "none":
            return out
        if reduction == "sum":
            return out.sum()
        return out.mean()

    @torch.no_grad()
    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Most probable path per row -> long ``[B, T]``; positions past a row's length are -1.

        Rows are independent, so whole songs of different lengths can be decoded together in one
        call (right-padded ``[B, T, S]`` with their mask); rows with no valid frame give all -1.

        ``delta`` (the best score of a path ending in each state) is renormalised at every frame by
        subtracting its row maximum. That shifts all of a row's candidates by the same amount, so the
        path is unchanged, but keeps ``delta`` near 0 instead of growing with ``T``. Without it the
        float32 scores of a long song drift far from 0 (one ulp is ~0.01 at 1e5), near-ties are broken
        differently than in float64, and 6-22 frames of a 12,000-frame note-state decode (97 states,
        emissions ~3 * randn) differed from the float64 path; with it float32 gives the float64 path.
        """
        mask = self._check(emissions, mask)
        trans, start, end = self._effective(emissions.dtype)
        B, T, S = emissions.shape
        device = emissions.device
        delta = start + emissions[:, 0]
        delta = delta - delta.max(dim=1, keepdim=True).values
        identity = torch.arange(S, device=device).expand(B, S)
        pointers = torch.empty(max(T - 1, 0), B, S, dtype=torch.long, device=device)
        scores = torch.empty(B, S, S, dtype=delta.dtype, device=device)
        full = mask.all(dim=0).tolist()                                   # frames where no row is padded
        for t in range(1, T):
            torch.add(delta.unsqueeze(2), trans, out=scores)
            best, arg = scores.max(dim=1)                                 # over the previous state
            best.add_(emissions[:, t])
            best.sub_(best.max(dim=1, keepdim=True).values)               # renormalise (path unchanged)
            delta = advance(delta, best, arg, pointers, t, mask, full[t], identity)
        path = backtrack(pointers, (delta + end).argmax(dim=1))
        return torch.from_numpy(path).to(device).masked_fill(~mask, -1)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Posterior ``p(y_t = s | emissions)`` by forward-backward -> ``[B, T, S]``.

        Rows sum to 1 over ``S`` on valid frames and are 0 on padded frames. Differentiable.
        """
        mask = self._check(emissions, mask)
        trans, _, end = self._effective(emissions.dtype)
        B, T, S = emissions.shape
        _, alphas = self._forward_alphas(emissions, mask, keep_all=True)
        # backward: beta_t[i] = log sum over continuations from state i at frame t (incl. end score)
        beta = end.expand(B, S)
        betas = [beta]
        for t in range(T - 2, -1, -1):
            nxt = torch.logsumexp(trans + (emissions[:, t + 1] + beta).unsqueeze(1), dim=2)
            beta = torch.where(mask[:, t + 1:t + 2], nxt, beta)
            betas.append(beta)
        betas.reverse()
        alpha = torch.stack(alphas, dim=1)                                 # [B, T, S]
        beta = torch.stack(betas, dim=1)
        logz = torch.logsumexp(alphas[-1] + end, dim=1)                    # [B]
        post = torch.exp(alpha + beta - logz[:, None, None])
        return post * mask.unsqueeze(2).to(post.dtype)
