"""Frame-level note transcription heads.

X is a list of clips' hidden states [T_i, L, D]; y a list of note lists [[onset_s, offset_s, midi], ...]
(seconds of the clip's file). ``offsets`` gives the time (s) of each clip's frame 0 and
``frame_rate`` the frames per second, so frames and notes share one timeline.

- :class:`FrameClassifierHead` (``frames``): the MIR-ST500 baseline convention of REFERENCES.md
  section 2: weighted layer sum -> linear layer with 20 outputs per frame (onset, silence, octave,
  pitch class), its four losses, and the onset-peak / silence parser.
- :class:`CRFHead` (``crf``): weighted layer sum -> linear emissions over note states (silence,
  onset and sustain per pitch) -> a linear-chain CRF trained with its log-likelihood and decoded
  with Viterbi into notes.

Both train on random windows of ``window`` frames and early-stop on the validation COnP F1.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator

from heads import metrics
from heads.crf import LinearChainCRF
from heads.frame_targets import N_OUTPUTS, encode_targets, frame_loss, parse_notes, probabilities
from heads.modules import SumThenHead
from heads.note_states import NoteStates
from heads.notes import notes_to_arrays
from heads.persist import SaveLoadMixin
from heads.training import lr_grid, sweep_lr


class _FrameHead(SaveLoadMixin, BaseEstimator):
    """Shared windowed training and decoding. Subclasses define targets, loss, decoding."""

    def _targets(self, notes, n_frames: int, offset: float):
        raise NotImplementedError

    def _loss(self, module, x, targets, mask):
        raise NotImplementedError

    def _decode(self, module, x: torch.Tensor, offset: float) -> list:
        raise NotImplementedError

    def _n_out(self) -> int:
        raise NotImplementedError

    def _select(self, x: np.ndarray) -> np.ndarray:
        if self.layers is None or isinstance(self.layers, str):
            return x
        return x[:, list(self.layers)]

    def _window(self, X: "_Clips", i: int, a: int, b: int) -> torch.Tensor:
        """Frames [a, b) of clip i, selected layers, float32 tensor [b - a, L', D]."""
        return torch.from_numpy(self._select(np.asarray(X.window(i, a, b), dtype=np.float32)))

    @staticmethod
    def _tile(n: int, window: int, phase: int) -> list[tuple[int, int]]:
        """Windows ``[(start, stop), ...]`` that tile frames ``[0, n)`` exactly once, none longer than
        ``window``: ``[0, phase)`` when ``phase > 0``, then ``[phase, phase + window)``, ``[phase + window,
        phase + 2 * window)``, ... (the last one cut at ``n``). A clip of at most ``window`` frames is
        one window whatever the phase; an empty clip has none."""
        if n <= 0:
            return []
        if n <= window:
            return [(0, n)]
        phase = int(phase) % window
        cuts = ([0] if phase else []) + list(range(phase, n, window)) + [n]
        return list(zip(cuts[:-1], cuts[1:]))

    def _windows(self, X: "_Clips", targets, gen):
        """An epoch: every clip cut into windows of at most ``window`` frames at a random phase (drawn
        from ``gen`` per clip and epoch), shuffled, in batches padded to the batch's longest window.
        The windows of a clip tile it, so every frame is fed exactly once per epoch (see :meth:`_tile`).
        Frames are read window by window, so a split never has to fit in memory."""
        window = int(self.window)
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")
        items = []
        for i in range(len(X)):
            n_i = X.n_frames(i)
            phase = int(torch.randint(0, max(1, min(window, n_i)), (1,), generator=gen))
            items += [(i, a, b) for a, b in self._tile(n_i, window, phase)]
        order = torch.randperm(len(items), generator=gen).tolist()
        items = [items[j] for j in order]
        L, D = self.n_layers_in_, self.n_features_in_
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            W = max(b - a for _, a, b in chunk)  # pad to the batch, not the window
            x = torch.zeros(len(chunk), W, L, D)
            mask = torch.zeros(len(chunk), W, dtype=torch.bool)
            tg = {k: torch.zeros((len(chunk), W) + v.shape[1:], dtype=v.dtype) for k, v in targets[0].items()}
            for r, (i, a, b) in enumerate(chunk):
                n = b - a
                x[r, :n] = self._window(X, i, a, b)
                mask[r, :n] = True
                for k in tg:
                    tg[k][r, :n] = targets[i][k][a:b]
            yield x.to(self.device), {k: v.to(self.device) for k, v in tg.items()}, mask.to(self.device)

    def fit(self, X, y, frame_rate: float = 50.0, offsets=None, eval_set=None):
        """X list of [T_i, L, D], y list of note lists, frame_rate (Hz), offsets list of frame-0 times (s);
        ``eval_set=(X_val, y_val, offsets_val)`` for early stopping and the lr choice."""
        if len(X) == 0:
            raise ValueError("no training clips")
        self.frame_rate_ = float(frame_rate)
        offsets = [0.0] * len(X) if offsets is None else list(offsets)
        X = _Clips.of(X).in_memory_if_small()
        targets = [self._targets(notes, X.n_frames(i), off) for i, (notes, off) in enumerate(zip(y, offsets))]
        if eval_set is None:
            n_val = max(1, len(X) // 6)
            Xv, yv, ov = X.subset(range(n_val)), y[:n_val], offsets[:n_val]
            X, targets = X.subset(range(n_val, len(X))), targets[n_val:]
        else:
            Xv, yv, ov = eval_set
            ov = [0.0] * len(Xv) if ov is None else list(ov)
            Xv = _Clips.of(Xv).in_memory_if_small()
        L, D = self._select(np.zeros((1,) + X.shape_ld, np.float32)).shape[1:]
        self.n_layers_in_, self.n_features_in_ = L, D
        self.layers_used_ = (list(range(X.shape_ld[0])) if self.layers is None or isinstance(self.layers, str)
                             else [int(l) for l in self.layers])

        def evaluate(module):
            pairs = {}
            for i, (ref, off) in enumerate(zip(yv, ov)):
                x = self._window(Xv, i, 0, Xv.n_frames(i)).to(self.device)
                ri, rp = notes_to_arrays(ref)
                ei, ep = notes_to_arrays(self._decode(module, x, off))
                pairs[i] = (ri, rp, ei, ep)
            return metrics.transcription_report(pairs)["mean"]["COnP"]["f1"]

        module, lr, scores, res = sweep_lr(
            lambda: self._make_module(L, D).to(self.device), lr_grid(self.lr), self.seed,
            loss_fn=lambda m, batch: self._loss(m, *batch), batches=lambda g: self._windows(X, targets, g),
            evaluate=evaluate, epochs=self.epochs, patience=self.patience, progress=self.progress)
        self.module_, self.lr_, self.lr_scores_, self.history_ = module.cpu().eval(), lr, scores, res.history
        self.best_epoch_ = res.best_epoch
        self.layer_weights_ = self.module_.net.sum.weights().detach().numpy()
        return self

    def _make_module(self, L, D) -> torch.nn.Module:
        raise NotImplementedError

    def predict(self, X, offsets=None) -> list:
        """Notes [[onset_s, offset_s, midi], ...] per clip (whole clips decoded in one piece)."""
        offsets = [0.0] * len(X) if offsets is None else list(offsets)
        X = _Clips.of(X)
        out = []
        with torch.no_grad():
            for i, off in enumerate(offsets):
                out.append(self._decode(self.module_, self._window(X, i, 0, X.n_frames(i)), off))
        return out

    def score(self, X, y, offsets=None) -> float:
        """Mean COnP F1 over clips."""
        pairs = {}
        for i, (ref, est) in enumerate(zip(y, self.predict(X, offsets))):
            pairs[i] = (*notes_to_arrays(ref), *notes_to_arrays(est))
        return metrics.transcription_report(pairs)["mean"]["COnP"]["f1"]


class _Clips:
    """Uniform access to clips given as a list of arrays [T_i, L, D] or a lazy
    :class:`featurestore.datasets.ClipFrames`: len, n_frames(i), window(i, a, b), subset, shape_ld."""

    def __init__(self, source, index=None):
        self.source = source
        self.index = list(range(len(source))) if index is None else list(index)
        first = source[0] if not hasattr(source, "shape_ld") else None
        self.shape_ld = tuple(source.shape_ld) if first is None else tuple(np.asarray(first).shape[1:])

    @classmethod
    def of(cls, X) -> "_Clips":
        if isinstance(X, cls):
            return X
        if len(X) == 0:
            raise ValueError("no clips")
        return cls(X)

    def __len__(self):
        return len(self.index)

    def n_frames(self, i: int) -> int:
        j = self.index[i]
        return self.source.n_frames(j) if hasattr(self.source, "n_frames") else len(self.source[j])

    def window(self, i: int, a: int, b: int) -> np.ndarray:
        j = self.index[i]
        return self.source.window(j, a, b) if hasattr(self.source, "window") else np.asarray(self.source[j])[a:b]

    def subset(self, idx) -> "_Clips":
        return _Clips(self.source, [self.index[i] for i in idx])

    def in_memory_if_small(self, limit_bytes: float = 2e9) -> "_Clips":
        """Read every clip once as float32 when that takes less than ``limit_bytes`` (a small split is
        then not re-read window by window each epoch); otherwise stay lazy."""
        L, D = self.shape_ld
        total = sum(self.n_frames(i) for i in range(len(self))) * L * D * 4
        if total > limit_bytes or not hasattr(self.source, "window"):
            return self
        return _Clips([np.asarray(self.window(i, 0, self.n_frames(i)), dtype=np.float32) for i in range(len(self))])


class _Net(torch.nn.Module):
    def __init__(self, L, D, n_out, layer_norm, crf=None):
        super().__init__()
        self.net = SumThenHead(L, D, torch.nn.Linear(D, n_out), layer_norm)
        self.crf = crf

    def forward(self, x):
        return self.net(x)


class FrameClassifierHead(_FrameHead):
    """The 20-output frame classifier baseline (onset/silence/octave/pitch class) with the onset-peak
    parser (onset >= 0.4 and local max over +-3 frames, silence >= 0.5 ends a note).

    Parameters: lr (float or grid), epochs, window (frames), batch_size, patience, layer_norm,
    layers, onset_pos_weight (15), seed, device, progress. Learned: ``layer_weights_``, ``module_``,
    ``frame_rate_``, ``lr_``, ``history_``.
    """

    def __init__(self, lr=3e-3, epochs=60, window=250, batch_size=16, patience=10, layer_norm=False, layers=None,
                 onset_pos_weight=15.0, seed=0, device="cpu", progress=False):
        self.lr, self.epochs, self.window, self.batch_size, self.patience = lr, epochs, window, batch_size, patience
        self.layer_norm, self.layers, self.onset_pos_weight = layer_norm, layers, onset_pos_weight
        self.seed, self.device, self.progress = seed, device, progress

    def _make_module(self, L, D):
        return _Net(L, D, N_OUTPUTS, self.layer_norm)

    def _targets(self, notes, n_frames, offset):
        t = encode_targets(notes, n_frames, self.frame_rate_, offset)
        return {k: torch.from_numpy(np.asarray(v)) for k, v in t.items()}

    def _loss(self, module, x, targets, mask):
        return frame_loss(module(x), targets, mask, onset_pos_weight=self.onset_pos_weight)

    def _decode(self, module, x, offset):
        probs = probabilities(module(x).cpu().numpy())
        return parse_notes(probs, self.frame_rate_, offset)


class CRFHead(_FrameHead):
    """Linear emissions over note states (silence; onset and sustain per MIDI pitch in
    [midi_low, midi_high]) and a linear-chain CRF with structurally allowed transitions (a sustain
    only continues the same pitch). Trained with the CRF log-likelihood, decoded with Viterbi.

    Parameters as :class:`FrameClassifierHead` plus midi_low/midi_high. Learned additionally:
    the CRF's transitions inside ``module_``.
    """

    def __init__(self, lr=3e-3, epochs=60, window=250, batch_size=16, patience=10, layer_norm=False, layers=None,
                 midi_low=36, midi_high=83, seed=0, device="cpu", progress=False):
        self.lr, self.epochs, self.window, self.batch_size, self.patience = lr, epochs, window, batch_size, patience
        self.layer_norm, self.layers, self.midi_low, self.midi_high = layer_norm, layers, midi_low, midi_high
        self.seed, self.device, self.progress = seed, device, progress

    @property
    def states_(self) -> NoteStates:
        return NoteStates(self.midi_low, self.midi_high)

    def _make_module(self, L, D):
        ns = self.states_
        # windows may start inside a note, so any state may start a training window
        return _Net(L, D, ns.num_states, self.layer_norm, LinearChainCRF(ns.num_states, ns.allowed()))

    def _targets(self, notes, n_frames, offset):
        return {"states": torch.from_numpy(np.asarray(self.states_.encode(notes, n_frames, self.frame_rate_,
                                                                          offset), dtype=np.int64))}

    def _loss(self, module, x, targets, mask):
        em = module(x)
        return module.crf.nll(em, targets["states"], mask, reduction="sum") / mask.sum().clamp(min=1)

    def _decode(self, module, x, offset):
        em = module(x)[None]
        path = module.crf.viterbi(em, torch.ones(em.shape[:2], dtype=torch.bool, device=em.device))[0]
        return self.states_.decode(path.cpu().numpy(), self.frame_rate_, offset)
