"""Per-frame note states for the CRF transcription head, and notes <-> state-sequence conversions.

State space
-----------
For ``P`` pitches ``midi_low .. midi_high`` (default MIDI 36..83, ``P = 48``, the 4 octaves of the
MIR-ST500 baseline's targets):

* state ``0``          -- silence,
* state ``1 + 2k``     -- onset of pitch ``midi_low + k`` (the first frame of a note),
* state ``2 + 2k``     -- sustain of pitch ``midi_low + k`` (every later frame of that note),

so ``S = 1 + 2P`` (97 by default). Allowed transitions (``allowed()[i, j]``, from ``i`` to ``j``):

* ``silence`` may follow anything (a note ends, or silence continues);
* ``onset_k`` may follow anything (a new note may start after silence, after any note -- legato or
  a re-attack of the same pitch -- and even right after another onset, for one-frame notes);
* ``sustain_k`` may follow only ``onset_k`` or ``sustain_k`` (a note keeps its pitch);

and a sequence may start in ``silence`` or any ``onset`` (``allowed_start()``), never in a sustain.

Why this non-factorised form
----------------------------
A factorised output (onset / silence / octave / pitch-class heads, as in the baseline) scores each
factor independently per frame and needs a heuristic parser to turn frames into notes. Here one state
carries both "where in a note are we" and "which pitch", so a first-order chain can enforce the note
grammar exactly: a note has exactly one onset, cannot change pitch mid-note, and ends exactly where the
sustain run stops. Viterbi then returns a sequence that maps to notes with no thresholds or peak
picking, and the CRF log-likelihood trains onsets, pitch and offsets jointly. Splitting onset and
sustain per pitch (rather than one "voiced_k" state) is what lets the chain distinguish a repeated note
(``... sustain_k, onset_k ...``) from a held one, and lets onset-specific emission evidence (attacks)
enter the score.

Cost: ``S = 97`` states means ``S^2 = 9409`` transition scores (of which ``97 * 49 + 48 * 2 = 4849``
are allowed: the silence and onset columns are full, each sustain column has two entries) and
``O(T * S^2)`` time per sequence for the forward algorithm and Viterbi. The transition parameters
are shared across pitches only implicitly (nothing ties ``sustain_40 -> onset_41`` to
``sustain_60 -> onset_61``), so rare pitch pairs get little training signal; with ~10^4 parameters
this is still negligible next to the emission model, and the masked entries are fixed, not learned.

Conventions
-----------
Frame ``j`` has time ``t_j = frame_offset_s + j / frame_rate``. Notes are ``[onset_s, offset_s,
midi]``. See :meth:`NoteStates.encode` and :meth:`NoteStates.decode` for the exact rules.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from heads.notes import midi_number

SILENCE = 0

_EPS = 1e-9  # slack (in frames) for float round-off when a time falls exactly on a frame


class NoteStates:
    """Note state space ``silence | onset_k | sustain_k`` for pitches ``midi_low .. midi_high``."""

    def __init__(self, midi_low: int = 36, midi_high: int = 83):
        midi_low, midi_high = int(midi_low), int(midi_high)
        if midi_high < midi_low:
            raise ValueError(f"midi_high ({midi_high}) < midi_low ({midi_low})")
        if midi_high - midi_low + 1 < 12:
            raise ValueError("the pitch range must span at least one octave (12 semitones) so that "
                             "out-of-range notes can be folded into it by octaves")
        self.midi_low = midi_low
        self.midi_high = midi_high
        self.num_pitches = midi_high - midi_low + 1
        self.num_states = 1 + 2 * self.num_pitches

    def __repr__(self) -> str:
        return f"NoteStates(midi_low={self.midi_low}, midi_high={self.midi_high}, S={self.num_states})"

    # ------------------------------------------------------------------------------ indexing
    def onset_state(self, midi: int) -> int:
        return 1 + 2 * (self.clip_midi(midi) - self.midi_low)

    def sustain_state(self, midi: int) -> int:
        return 2 + 2 * (self.clip_midi(midi) - self.midi_low)

    def state_midi(self, state: int) -> int | None:
        """MIDI pitch of an onset/sustain state, None for silence."""
        state = int(state)
        if state == SILENCE:
            return None
        if not 0 < state < self.num_states:
            raise ValueError(f"state {state} out of range [0, {self.num_states})")
        return self.midi_low + (state - 1) // 2

    def clip_midi(self, midi: float) -> int:
        """Round to the nearest semitone (:func:`heads.notes.midi_number`: halves up, 60.5 -> 61), then
        fold into ``[midi_low, midi_high]`` by whole octaves (a note below the range is raised by
        octaves, one above it lowered), keeping the pitch class."""
        m = midi_number(midi)
        if m < self.midi_low:
            m += 12 * math.ceil((self.midi_low - m) / 12)
        elif m > self.midi_high:
            m -= 12 * math.ceil((m - self.midi_high) / 12)
        return m

    # ------------------------------------------------------------------------------ grammar
    def allowed(self) -> torch.Tensor:
        """bool ``[S, S]``: ``allowed[i, j]`` is True when the transition ``i -> j`` is possible."""
        S, P = self.num_states, self.num_pitches
        a = torch.zeros(S, S, dtype=torch.bool)
        a[:, SILENCE] = True
        onsets = 1 + 2 * torch.arange(P)
        a[:, onsets] = True
        a[onsets, onsets + 1] = True          # onset_k -> sustain_k
        a[onsets + 1, onsets + 1] = True      # sustain_k -> sustain_k
        return a

    def allowed_start(self) -> torch.Tensor:
        """bool ``[S]``: a sequence may start in silence or in any onset state."""
        s = torch.zeros(self.num_states, dtype=torch.bool)
        s[SILENCE] = True
        s[1::2] = True
        return s

    def is_valid(self, states) -> bool:
        """Whether a state sequence respects ``allowed_start()`` and ``allowed()``."""
        st = torch.as_tensor(np.asarray(states), dtype=torch.long).reshape(-1)
        if st.numel() == 0:
            return True
        if bool(((st < 0) | (st >= self.num_states)).any()):
            return False
        if not bool(self.allowed_start()[st[0]]):
            return False
        return bool(self.allowed()[st[:-1], st[1:]].all())

    # ------------------------------------------------------------------------------ encode
    def encode(self, notes, n_frames: int, frame_rate: float, frame_offset_s: float = 0.0) -> torch.Tensor:
        """Notes ``[[onset_s, offset_s, midi], ...]`` -> long ``[n_frames]`` state per frame.

        Frame ``j`` has time ``t_j = frame_offset_s + j / frame_rate``. For each note:

        * its onset frame is the frame nearest the onset (``round((onset_s - frame_offset_s) *
          frame_rate)``, halves rounded to even) and gets ``onset_k``;
        * the other frames with ``onset_s <= t_j < offset_s`` get ``sustain_k``;
        * a note shorter than one frame (no frame inside it, or only its onset frame) still gets its
          onset frame;
        * MIDI pitches are rounded to the nearest semitone (halves up) and folded into ``[midi_low, midi_high]``
          by whole octaves (pitch class kept), see :meth:`clip_midi`;
        * overlapping notes (the output is monophonic): the later onset wins -- an earlier note is cut
          at the onset frame of the next note (and vanishes if both share an onset frame; then the one
          listed later wins). The result always respects ``allowed()``;
        * a note that started before frame 0 but lasts into the window gets its onset state on frame 0
          (so the sequence respects ``allowed_start()``); notes wholly outside the window are dropped.

        Frames covered by no note are silence.
        """
        n_frames = int(n_frames)
        if n_frames < 0:
            raise ValueError("n_frames must be >= 0")
        if frame_rate <= 0:
            raise ValueError("frame_rate must be > 0")
        out = torch.zeros(n_frames, dtype=torch.long)
        arr = np.asarray(notes, dtype=np.float64).reshape(-1, 3) if len(notes) else np.zeros((0, 3))
        if n_frames == 0 or len(arr) == 0:
            return out
        # frame spans [first, stop) of each note, in the time axis of the window
        spans = []
        for idx, (on, off, midi) in enumerate(arr):
            x_on = (on - frame_offset_s) * frame_rate
            x_off = (off - frame_offset_s) * frame_rate
            first = int(np.round(x_on))
            stop = max(math.ceil(x_off - _EPS), first + 1)
            spans.append((first, idx, stop, self.clip_midi(midi)))
        spans.sort()  # by onset frame, ties kept in list order (later in the list wins)
        for n, (first, _, stop, midi) in enumerate(spans):
            if n + 1 < len(spans):
                stop = min(stop, spans[n + 1][0])   # later onset wins
            lo, hi = max(first, 0), min(stop, n_frames)
            if hi <= lo:
                continue
            out[lo] = self.onset_state(midi)
            out[lo + 1:hi] = self.sustain_state(midi)
        return out

    # ------------------------------------------------------------------------------ decode
    def decode(self, states, frame_rate: float, frame_offset_s: float = 0.0) -> list[list]:
        """State sequence (long ``[T]``) -> notes ``[[onset_s, offset_s, midi], ...]``.

        A note starts at the time of an onset frame and ends at the time of the first frame that is
        not its sustain, i.e. ``offset = t(last frame of the note) + 1 / frame_rate`` (a note running to
        the end of the sequence ends at ``t_T``). Invalid sequences are tolerated: a sustain that does
        not continue a note of the same pitch (after silence, after another pitch, or at the start)
        starts a new note. Negative values (padding, e.g. Viterbi's -1) are treated as silence.
        ``onset_s``/``offset_s`` are floats, ``midi`` an int.
        """
        if frame_rate <= 0:
            raise ValueError("frame_rate must be > 0")
        st = np.asarray(states.detach().cpu() if isinstance(states, torch.Tensor) else states,
                        dtype=np.int64).reshape(-1)
        if ((st >= self.num_states)).any():
            raise ValueError(f"state out of range [0, {self.num_states})")

        def t(j: int) -> float:
            return float(frame_offset_s + j / frame_rate)

        notes: list[list] = []
        cur_start, cur_pitch = None, None          # open note: first frame, pitch index k
        for j, s in enumerate(st.tolist()):
            if s <= SILENCE:
                if cur_start is not None:
                    notes.append([t(cur_start), t(j), self.midi_low + cur_pitch])
                cur_start = cur_pitch = None
                continue
            k, is_onset = (s - 1) // 2, (s - 1) % 2 == 0
            if is_onset or cur_start is None or cur_pitch != k:
                if cur_start is not None:
                    notes.append([t(cur_start), t(j), self.midi_low + cur_pitch])
                cur_start, cur_pitch = j, k
        if cur_start is not None:
            notes.append([t(cur_start), t(len(st)), self.midi_low + cur_pitch])
        return notes
