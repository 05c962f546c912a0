"""Frame-level note transcription heads.

X is a list of clips' hidden states [T_i, L, D] (or a lazy :class:`featurestore.datasets.ClipFrames`);
y a list of note lists [[onset_s, offset_s, midi], ...] (seconds of the clip's file). ``offsets`` gives
the time (s) of each clip's frame 0 and ``frame_rate`` the frames per second, so frames and notes share
one timeline.

- :class:`FrameClassifierHead` (``frames``): the MIR-ST500 baseline convention of REFERENCES.md
  section 2: weighted layer sum -> linear layer with 20 outputs per frame (onset, silence, octave,
  pitch class), its four losses, and the onset-peak / silence parser.
- :class:`CRFHead` (``crf``): weighted layer sum -> emissions over note states (silence, onset and
  sustain per pitch) -> a linear-chain CRF (:class:`heads.note_crf.NoteChainCRF`) trained with its
  log-likelihood and decoded with Viterbi into notes.

Both take ``context`` (seconds, default 0): with ``context > 0`` a temporal layer
(:class:`heads.temporal.TemporalContext`, a dilated convolution stack that sees
``round(context * frame_rate)`` frames on each side) sits between the layer sum and the per-frame
output. ``context=0`` is the paper's plain per-frame linear probe.

Training: random windows of ``window`` frames that tile each clip once per epoch, Adam, a learning
rate grid. The training frames are gathered into one float32 tensor once per fit (when they fit in
memory) and every learning rate and epoch reuses it; the selection split's frames likewise.

Model choice on the selection split (``eval_set``):

- ``frames``: the epoch with the best validation COnP F1 (decoding the parser is cheap), and the
  learning rate with the best such score;
- ``crf`` with ``selection="conp"`` (default): the same; its validation decodes every selection
  clip with batched Viterbi each epoch (about 5 % of an epoch on the 30-minute benchmark corpus,
  see ``history_[i]["val_s"]`` against ``["train_s"]``);
- ``crf`` with ``selection="nll"``: the epoch with the lowest validation negative log-likelihood per
  frame (one batched forward pass, no decoding in the loop), then the learning rate whose chosen
  epoch decodes to the best validation COnP F1 (one decode per rate): for selection splits so large
  that decoding them every epoch would cost too much. ``history_``'s ``val`` is then minus the
  NLL per frame.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator

from heads import metrics
from heads.params import BOOL, Free, Grid, Int, LayerSelection, Options, Real, validate_params
from heads.frame_targets import N_OUTPUTS, encode_targets, frame_loss, parse_notes, probabilities
from heads.modules import WeightedLayerSum
from heads.note_crf import NoteChainCRF
from heads.note_states import NoteStates
from heads.notes import notes_to_arrays
from heads.head_codec import SaveLoadMixin
from heads.temporal import TemporalContext, context_frames
from heads.trained_module import adopt_trained_module
from heads.training import lr_grid, sweep_lr

#: Bytes of float32 frames a split may take in memory before training reads it window by window.
IN_MEMORY_BYTES = 2e9
#: Bytes of float32 frames in one decoding batch of whole clips.
DECODE_BATCH_BYTES = 256e6


def conp_f1(refs, ests) -> float:
    """Mean COnP F1 over clips of reference and estimated note lists."""
    pairs = {i: (*notes_to_arrays(r), *notes_to_arrays(e)) for i, (r, e) in enumerate(zip(refs, ests))}
    return metrics.transcription_report(pairs)["mean"]["COnP"]["f1"]


class _FrameHead(SaveLoadMixin, BaseEstimator):
    """Shared windowed training and batched decoding. Subclasses define targets, loss, decoding.

    The public interface a trainer outside this module uses (``heads.finetune`` trains the module
    together with a frontend), and that :meth:`fit` uses itself:

    - :meth:`build_module` ``(n_layers, dim, frame_rate=...)``: the untrained module,
      x [B, T, L, D] (mask [B, T]) -> per-frame outputs [B, T, n_out];
    - :meth:`frame_targets` ``(notes, n_frames, offset_s, frame_rate=...)``: one clip's training targets;
    - :meth:`module_loss` ``(module, x, targets, mask)``: the training loss of a batch;
    - :meth:`decode` ``(module, outputs, mask, offsets, frame_rate=...)``: outputs -> note lists;
    - :meth:`from_trained_module`: a fitted head around a module trained elsewhere.

    ``frame_rate`` (frames per second) defaults to the fitted ``frame_rate_``.
    """

    def frame_targets(self, notes, n_frames: int, offset_s: float, frame_rate: float | None = None) -> dict:
        """One clip's training targets: notes [[onset_s, offset_s, midi], ...] (seconds of the clip's
        file), its ``n_frames`` frames, frame 0 at ``offset_s`` -> {name: tensor [n_frames, ...]}
        (what :meth:`module_loss` takes, batched to [B, T, ...])."""
        raise NotImplementedError

    def module_loss(self, module: torch.nn.Module, x: torch.Tensor, targets: dict, mask: torch.Tensor) -> torch.Tensor:
        """The training loss (a scalar tensor) of ``module`` on hidden states x [B, T, L, D] with
        targets {name: [B, T, ...]} (:meth:`frame_targets`, padded) and mask [B, T] (True on valid frames)."""
        raise NotImplementedError

    def decode(self, module: torch.nn.Module, outputs: torch.Tensor, mask: torch.Tensor, offsets,
               frame_rate: float | None = None) -> list:
        """Module outputs [B, T, n_out] of a padded batch of whole clips (mask [B, T]), frame 0 of row
        b at ``offsets[b]`` seconds -> a note list [[onset_s, offset_s, midi], ...] per row."""
        raise NotImplementedError

    def _n_out(self) -> int:
        raise NotImplementedError

    def _rate(self, frame_rate) -> float:
        return float(self.frame_rate_ if frame_rate is None else frame_rate)

    def build_module(self, n_layers: int, dim: int, n_classes: int | None = None, *,
                     frame_rate: float | None = None) -> torch.nn.Module:
        """The untrained module this head trains: x [B, T, ``n_layers``, ``dim``] (mask [B, T]) ->
        per-frame outputs [B, T, n_out] (softmax layer weights ``.sum``, the temporal context of
        ``context`` seconds at ``frame_rate`` frames per second, a linear output; the CRF head's
        transitions ride on it as ``.crf``). ``n_classes``: None, or the head's own output count
        (fixed by the head: 20 for ``frames``, the note states for ``crf``)."""
        if n_classes is not None and int(n_classes) != self._n_out():
            raise ValueError(f"n_classes={n_classes}: {type(self).__name__} has {self._n_out()} outputs per frame")
        radius = context_frames(self.context, self._rate(frame_rate))
        return _Net(int(n_layers), int(dim), self._n_out(), self.layer_norm, radius, int(self.context_width),
                    self._crf())

    @classmethod
    def from_trained_module(cls, module: torch.nn.Module, *, frame_rate: float, history=(), best_epoch: int = -1,
                            **params):
        """A fitted head whose module is ``module``, trained elsewhere on frames of ``frame_rate``
        frames per second (a :meth:`build_module` module: ``heads.finetune`` trains it with the
        frontend). Its weights are copied into a module built by :meth:`build_module` (so it is
        checked to be one: ValueError otherwise), on the CPU in eval mode; ``module`` itself is not
        changed. history: per-epoch records (``{"epoch", "val", ...}``, ``val`` the selection score);
        best_epoch: the kept epoch (0-based); params: the head's hyperparameters (``lr`` the one
        rate it was trained with; ``layers`` must be None).

        Sets what ``fit`` sets: ``frame_rate_``, ``context_frames_``, ``layers_used_``,
        ``n_layers_in_``, ``n_features_in_``, ``module_``, ``lr_``, ``lr_scores_`` ({lr: best
        selection score}), ``history_``, ``best_epoch_``, ``layer_weights_``."""
        est = cls(**params)
        est._check_params()
        if not (np.isfinite(frame_rate) and frame_rate > 0):
            raise ValueError(f"frame_rate={frame_rate!r}: expected frames per second > 0")
        adopt_trained_module(est, module, _Net, lambda L, D: est.build_module(L, D, frame_rate=frame_rate),
                             history=history, best_epoch=best_epoch,
                             built=f"{cls.__name__}.build_module(frame_rate={frame_rate})")
        est.frame_rate_ = float(frame_rate)
        est.context_frames_ = context_frames(est.context, est.frame_rate_)
        return est

    def _crf(self):
        return None

    def _layer_index(self):
        return None if self.layers is None or isinstance(self.layers, str) else list(self.layers)

    #: Every constructor parameter and what it may be (:mod:`heads.params`); the subclasses add theirs.
    _parameter_constraints = {
        "lr": Grid(Real(0.0)), "epochs": Int(1), "window": Int(1), "batch_size": Int(1), "patience": Int(1),
        "layer_norm": BOOL, "layers": LayerSelection(), "context": Real(0.0, low_inclusive=True),
        "context_width": Int(1), "seed": Int(0), "device": Free(), "progress": BOOL}

    def _check_params(self):
        validate_params(self)

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

    def _windows(self, X, targets, gen):
        """An epoch: every clip cut into windows of at most ``window`` frames at a random phase (drawn
        from ``gen`` per clip and epoch), shuffled, in batches padded to the batch's longest window.
        The windows of a clip tile it, so every frame is fed exactly once per epoch (see :meth:`_tile`).
        ``X`` is a :class:`_FrameBank` (built once per fit) or clips with their ``targets``.
        Yields ``(x [B, W, L', D], targets {name: [B, W, ...]}, mask [B, W])`` on the head's device."""
        window = int(self.window)
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")
        bank = X if isinstance(X, _FrameBank) else _FrameBank(_Clips.of(X), targets, self._layer_index(), self.device)
        items = []
        for i in range(len(bank)):
            n_i = bank.n_frames(i)
            phase = int(torch.randint(0, max(1, min(window, n_i)), (1,), generator=gen))
            items += [(i, a, b) for a, b in self._tile(n_i, window, phase)]
        order = torch.randperm(len(items), generator=gen).tolist()
        items = [items[j] for j in order]
        for start in range(0, len(items), self.batch_size):
            yield bank.batch(items[start:start + self.batch_size])

    def fit(self, X, y, frame_rate: float = 50.0, offsets=None, eval_set=None):
        """X list of [T_i, L, D] (or lazy clips), y list of note lists, frame_rate (Hz), offsets list of
        frame-0 times (s); ``eval_set=(X_val, y_val, offsets_val)`` chooses the epoch and the learning rate
        (without it the first sixth of the clips is held out for that)."""
        if len(X) == 0:
            raise ValueError("no training clips")
        self._check_params()
        self.frame_rate_ = float(frame_rate)
        self.context_frames_ = context_frames(self.context, self.frame_rate_)
        offsets = [0.0] * len(X) if offsets is None else list(offsets)
        X = _Clips.of(X)
        if eval_set is None:
            n_val = max(1, len(X) // 6)
            Xv, yv, ov = X.subset(range(n_val)), list(y[:n_val]), offsets[:n_val]
            X, y, offsets = X.subset(range(n_val, len(X))), list(y[n_val:]), offsets[n_val:]
        else:
            Xv, yv, ov = eval_set
            ov = [0.0] * len(Xv) if ov is None else list(ov)
            Xv = _Clips.of(Xv)
        L_all = X.shape_ld[0]
        sel = self._layer_index()
        self.layers_used_ = list(range(L_all)) if sel is None else [int(l) for l in sel]
        self.n_layers_in_, self.n_features_in_ = len(self.layers_used_), X.shape_ld[1]
        targets = [self.frame_targets(notes, X.n_frames(i), off) for i, (notes, off) in enumerate(zip(y, offsets))]
        bank = _FrameBank(X, targets, sel, self.device)                    # read once, shared by every lr
        val_targets = [self.frame_targets(notes, Xv.n_frames(i), off) for i, (notes, off) in enumerate(zip(yv, ov))]
        val = _FrameBank(Xv, val_targets, sel, self.device)
        val_batches = val.song_batches()                                    # held once for every epoch
        L, D = self.n_layers_in_, self.n_features_in_
        evaluate, select = self._selection(val, val_batches, yv, ov)
        module, lr, scores, res = sweep_lr(
            lambda: self.build_module(L, D).to(self.device), lr_grid(self.lr), self.seed,
            loss_fn=lambda m, batch: self.module_loss(m, *batch), batches=lambda g: self._windows(bank, None, g),
            evaluate=evaluate, select=select, epochs=self.epochs, patience=self.patience, progress=self.progress)
        self.module_, self.lr_, self.lr_scores_, self.history_ = module.cpu().eval(), lr, scores, res.history
        self.best_epoch_ = res.best_epoch
        self.layer_weights_ = self.module_.sum.weights().detach().numpy()
        return self

    def _selection(self, val: "_FrameBank", val_batches, yv, ov):
        """(evaluate(module) -> per-epoch score, select(module) -> lr score or None); higher is better."""

        def decoded_conp(module):
            return conp_f1(yv, self._predict_batches(module, val, val_batches, ov))

        return decoded_conp, None

    def _module_skeleton(self) -> torch.nn.Module:
        """An untrained module of the fitted shape (``heads.persist`` loads the weights into it)."""
        return _Net(self.n_layers_in_, self.n_features_in_, self._n_out(), self.layer_norm, self.context_frames_,
                    int(self.context_width), self._crf())

    def _predict_batches(self, module, bank: "_FrameBank", batches, offsets) -> list:
        out = [[] for _ in range(len(bank))]          # a clip with no frame has no note
        module.eval()
        with torch.no_grad():
            for rows, x, mask, _ in batches:
                notes = self.decode(module, module(x, mask), mask, [offsets[i] for i in rows])
                for i, n in zip(rows, notes):
                    out[i] = n
        return out

    def predict(self, X, offsets=None) -> list:
        """Notes [[onset_s, offset_s, midi], ...] per clip. Whole clips are decoded, several in one
        padded batch (up to ``DECODE_BATCH_BYTES`` of frames); clips are read lazily batch by batch."""
        X = _Clips.of(X)
        offsets = [0.0] * len(X) if offsets is None else list(offsets)
        module = self.module_.to(self.device)
        try:
            bank = _FrameBank(X, None, self._layer_index(), self.device, limit_bytes=0)
            return self._predict_batches(module, bank, bank.song_batches(), offsets)
        finally:
            self.module_ = module.cpu()

    def score(self, X, y, offsets=None) -> float:
        """Mean COnP F1 over clips."""
        return conp_f1(y, self.predict(X, offsets))


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

    def can_read_into(self) -> bool:
        """Can clips be written straight into a caller's buffer (a store's lazy clips)?"""
        return hasattr(self.source, "window_into")

    def window_into(self, i: int, a: int, b: int, out: np.ndarray, layers=None) -> int:
        return self.source.window_into(self.index[i], a, b, out, layers)


class _FrameBank:
    """A split's frames (selected layers) and per-frame targets, for windowed training and batched decoding.

    When the split's float32 frames take at most ``limit_bytes``, every clip is read once into one
    tensor ``[F + 1, L', D]`` (row F is zeros: the padding row) on ``device``, targets likewise
    ``[F + 1, ...]``, and a batch of windows is one index gather. Otherwise windows are read from the
    source clip by clip, as they are asked for.
    """

    def __init__(self, clips: "_Clips", targets, layers, device, limit_bytes: float | None = None):
        limit_bytes = IN_MEMORY_BYTES if limit_bytes is None else limit_bytes
        self.clips, self.layers, self.device = clips, layers, torch.device(device)
        self.lengths = [clips.n_frames(i) for i in range(len(clips))]
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        total = int(self.starts[-1])
        L = clips.shape_ld[0] if layers is None else len(layers)
        self.shape_ld = (L, clips.shape_ld[1])
        self.frame_bytes = L * clips.shape_ld[1] * 4
        self.frames = None
        if total * self.frame_bytes <= limit_bytes:
            self.frames = torch.zeros((total + 1,) + self.shape_ld, device=self.device)
            for i in range(len(clips)):
                a, b = self.starts[i], self.starts[i + 1]
                if b <= a:
                    continue
                if self.device.type == "cpu" and clips.can_read_into():   # store -> this tensor, one copy
                    clips.window_into(i, 0, self.lengths[i], self.frames[a:b].numpy(), layers)
                else:
                    self.frames[a:b] = self._read(i, 0, self.lengths[i])
        self.targets = None
        if targets:
            self.targets = {}
            for k, v in targets[0].items():
                t = torch.zeros((total + 1,) + tuple(v.shape[1:]), dtype=v.dtype)
                for i, tg in enumerate(targets):
                    t[self.starts[i]:self.starts[i + 1]] = tg[k]
                self.targets[k] = t.to(self.device)

    def __len__(self):
        return len(self.lengths)

    def n_frames(self, i: int) -> int:
        return self.lengths[i]

    def _read(self, i: int, a: int, b: int) -> torch.Tensor:
        x = np.asarray(self.clips.window(i, a, b), dtype=np.float32)
        if self.layers is not None:
            x = x[:, self.layers]
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def batch(self, items):
        """Windows ``[(clip, start, stop), ...]`` -> (x [B, W, L', D], targets {name: [B, W, ...]} or None,
        mask [B, W]) padded to the longest window W (padded frames are zeros, targets 0)."""
        W = max(b - a for _, a, b in items)
        n = torch.tensor([b - a for _, a, b in items], device=self.device)
        mask = torch.arange(W, device=self.device)[None, :] < n[:, None]
        first = torch.tensor([int(self.starts[i]) + a for i, a, _ in items], device=self.device)
        idx = torch.where(mask, first[:, None] + torch.arange(W, device=self.device)[None, :],
                          torch.full_like(mask, int(self.starts[-1]), dtype=torch.long))
        if self.frames is not None:
            x = self.frames[idx]
        else:
            x = torch.zeros((len(items), W) + self.shape_ld, device=self.device)
            for r, (i, a, b) in enumerate(items):
                x[r, :b - a] = self._read(i, a, b)
        tg = None if self.targets is None else {k: v[idx] for k, v in self.targets.items()}
        return x, tg, mask

    def song_batches(self, budget_bytes: float | None = None):
        """Whole clips in padded batches (longest first, at most ``budget_bytes`` of frames per batch
        unless one clip is bigger) -> a list of (clip indices, x [B, T, L', D], mask [B, T], targets)
        when the frames are in memory (so every epoch reuses it), else an iterable that reads them
        again each time it is iterated (once per epoch)."""
        budget_bytes = DECODE_BATCH_BYTES if budget_bytes is None else budget_bytes
        order = sorted((i for i in range(len(self)) if self.lengths[i] > 0), key=lambda i: -self.lengths[i])
        groups, cur = [], []
        for i in order:
            if cur and (len(cur) + 1) * self.lengths[cur[0]] * self.frame_bytes > budget_bytes:
                groups.append(cur)
                cur = []
            cur.append(i)
        if cur:
            groups.append(cur)

        def make(rows):
            x, tg, mask = self.batch([(i, 0, self.lengths[i]) for i in rows])
            return rows, x, mask, tg

        if self.frames is not None:
            return [make(rows) for rows in groups]
        return _Reread(lambda: (make(rows) for rows in groups))


class _Reread:
    """An iterable whose every iteration calls ``make()`` for a fresh iterator (a generator can be
    iterated once only; validation iterates its batches every epoch)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


class _Net(torch.nn.Module):
    """x [B, T, L, D] (mask [B, T]) -> per-frame outputs [B, T, n_out]: weighted layer sum, optional
    temporal context (``radius`` frames each side), linear output; ``crf`` rides along for the CRF head."""

    def __init__(self, L, D, n_out, layer_norm, radius=0, width=64, crf=None):
        super().__init__()
        self.sum = WeightedLayerSum(L, D, layer_norm)
        self.context = TemporalContext(D, width, radius) if radius > 0 else None
        self.out = torch.nn.Linear(width if radius > 0 else D, n_out)
        self.crf = crf

    def forward(self, x, mask=None):
        return self.from_sum(self.sum(x), mask)

    def from_sum(self, h, mask=None):
        """Layer-summed frames [B, T, D] (``self.sum`` applied) -> outputs [B, T, n_out]; lets a caller
        sum a long clip window by window and run the rest over the whole clip."""
        if self.context is not None:
            h = self.context(h, mask)
        return self.out(h)


class FrameClassifierHead(_FrameHead):
    """The 20-output frame classifier baseline (onset/silence/octave/pitch class) with the onset-peak
    parser (onset >= 0.4 and local max over +-3 frames, silence >= 0.5 ends a note).

    Parameters: lr (float or grid), epochs, window (frames), batch_size, patience, layer_norm,
    layers, context (seconds each side; 0 = per-frame linear), context_width, onset_pos_weight (15),
    seed, device, progress. Learned: ``layer_weights_``, ``module_``, ``frame_rate_``,
    ``context_frames_``, ``lr_``, ``history_``.
    """

    _parameter_constraints = {**_FrameHead._parameter_constraints, "onset_pos_weight": Real(0.0)}

    def __init__(self, lr=3e-3, epochs=60, window=250, batch_size=16, patience=10, layer_norm=False, layers=None,
                 context=0.0, context_width=64, onset_pos_weight=15.0, seed=0, device="cpu", progress=False):
        self.lr, self.epochs, self.window, self.batch_size, self.patience = lr, epochs, window, batch_size, patience
        self.layer_norm, self.layers, self.onset_pos_weight = layer_norm, layers, onset_pos_weight
        self.context, self.context_width = context, context_width
        self.seed, self.device, self.progress = seed, device, progress

    def _n_out(self):
        return N_OUTPUTS

    def frame_targets(self, notes, n_frames, offset_s, frame_rate=None):
        """{"onset", "silence", "octave", "pitch_class": [n_frames]} (:func:`heads.frame_targets.encode_targets`)."""
        t = encode_targets(notes, n_frames, self._rate(frame_rate), offset_s)
        return {k: torch.from_numpy(np.asarray(v)) for k, v in t.items()}

    def module_loss(self, module, x, targets, mask):
        """The four losses of :func:`heads.frame_targets.frame_loss` (onset positives weighted ``onset_pos_weight``)."""
        return frame_loss(module(x, mask), targets, mask, onset_pos_weight=self.onset_pos_weight)

    def decode(self, module, outputs, mask, offsets, frame_rate=None):
        """The onset-peak / silence parser on each row's valid frames."""
        rate = self._rate(frame_rate)
        logits = outputs.float().cpu().numpy()
        n = mask.sum(1).tolist()
        return [parse_notes(probabilities(logits[r, :n[r]]), rate, off) for r, off in enumerate(offsets)]


class CRFHead(_FrameHead):
    """Emissions over note states (silence; onset and sustain per MIDI pitch in [midi_low, midi_high])
    and a linear-chain CRF with structurally allowed transitions (a sustain only continues the same
    pitch; :class:`heads.note_crf.NoteChainCRF`). Trained with the CRF log-likelihood, decoded with
    Viterbi, several clips per call.

    Parameters as :class:`FrameClassifierHead` (without onset_pos_weight) plus midi_low/midi_high and
    selection ("conp": epochs chosen by decoded validation COnP; "nll": by validation NLL, see the
    module docstring). Learned additionally: the CRF's transitions inside ``module_``.
    """

    _parameter_constraints = {**_FrameHead._parameter_constraints, "midi_low": Int(0, 127), "midi_high": Int(0, 127),
                              "selection": Options(("conp", "nll"))}

    def __init__(self, lr=3e-3, epochs=60, window=250, batch_size=16, patience=10, layer_norm=False, layers=None,
                 context=0.0, context_width=64, midi_low=36, midi_high=83, selection="conp", seed=0, device="cpu",
                 progress=False):
        self.lr, self.epochs, self.window, self.batch_size, self.patience = lr, epochs, window, batch_size, patience
        self.layer_norm, self.layers, self.midi_low, self.midi_high = layer_norm, layers, midi_low, midi_high
        self.context, self.context_width, self.selection = context, context_width, selection
        self.seed, self.device, self.progress = seed, device, progress

    @property
    def states_(self) -> NoteStates:
        return NoteStates(self.midi_low, self.midi_high)

    def _n_out(self):
        return self.states_.num_states

    def _crf(self):
        # windows may start inside a note, so any state may start a training window
        return NoteChainCRF(self.states_)

    def frame_targets(self, notes, n_frames, offset_s, frame_rate=None):
        """{"states": [n_frames] note-state indices (long)} (:meth:`heads.note_states.NoteStates.encode`)."""
        return {"states": torch.from_numpy(np.asarray(self.states_.encode(notes, n_frames, self._rate(frame_rate),
                                                                          offset_s), dtype=np.int64))}

    def module_loss(self, module, x, targets, mask):
        """The CRF's negative log-likelihood per valid frame."""
        em = module(x, mask)
        return module.crf.nll(em, targets["states"], mask, reduction="sum") / mask.sum().clamp(min=1)

    def _selection(self, val, val_batches, yv, ov):
        """"conp": epochs and lr by decoded COnP; "nll": epochs by validation NLL per frame (one batched
        forward pass), the lr by decoded COnP."""
        if self.selection not in ("conp", "nll"):
            raise ValueError(f"selection must be 'conp' or 'nll', got {self.selection!r}")

        def neg_nll(module):
            total, frames = 0.0, 0
            for _, x, mask, tg in val_batches:
                total += float(module.crf.nll(module(x, mask), tg["states"], mask, reduction="sum"))
                frames += int(mask.sum())
            return -total / max(frames, 1)

        def decoded_conp(module):
            return conp_f1(yv, self._predict_batches(module, val, val_batches, ov))

        return (decoded_conp, None) if self.selection == "conp" else (neg_nll, decoded_conp)

    def decode(self, module, outputs, mask, offsets, frame_rate=None):
        """Viterbi paths of the CRF (``module.crf``), each row's valid frames -> notes."""
        rate = self._rate(frame_rate)
        paths = module.crf.viterbi(outputs, mask).cpu().numpy()
        n = mask.sum(1).tolist()
        return [self.states_.decode(paths[r, :n[r]], rate, off) for r, off in enumerate(offsets)]
