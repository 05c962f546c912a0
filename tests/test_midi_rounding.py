"""One MIDI rounding rule (heads.notes.midi_number: nearest semitone, halves up), used everywhere a
MIDI pitch becomes an integer: note states, frame targets, reference notes, clustering labels, MIDI."""
from __future__ import annotations

import math

import numpy as np
import pytest

from heads.frame_targets import INACTIVE_PC, LOWEST_MIDI, encode_targets, midi_to_octave_pc
from heads.note_states import NoteStates
from heads.notes import midi_number


@pytest.mark.parametrize("midi, expected", [
    (60.7, 61), (60.5, 61), (60.49, 60), (59.5, 60), (60.0, 60), (61.0, 61), (60.2, 60),
    (0.5, 1), (0.49999999999999994, 0),         # the largest double below 0.5: not 1 (x + 0.5 rounds)
    (-0.5, 0), (-1.5, -1), (-0.7, -1), (-0.2, 0), (127.5, 128),
    (np.float32(60.5), 61), (np.float64(60.7), 61), (np.int64(60), 60), (60, 60), (np.array(60.5), 61),
])
def test_midi_number_values(midi, expected):
    out = midi_number(midi)
    assert out == expected
    assert type(out) is int


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan"), "sixty", None])
def test_midi_number_rejects_non_finite(bad):
    with pytest.raises(ValueError):
        midi_number(bad)


def test_midi_number_is_floor_x_plus_half_on_a_grid():
    xs = np.arange(-2000, 2000) / 100.0 + 60.0        # 40.00 .. 79.99 in steps of 0.01
    assert [midi_number(x) for x in xs] == np.floor(xs + 0.5).astype(int).tolist()


# ------------------------------------------------------------------------------ every user agrees
FRAME_RATE = 50.0
NOTE = (0.1, 0.5)      # seconds: frames 5..24 at 50 Hz


def _note_states_midi(m: float) -> int:
    ns = NoteStates()
    states = ns.encode([[*NOTE, m]], n_frames=40, frame_rate=FRAME_RATE)
    onset = int(states[5])
    assert ns.state_midi(onset) == ns.state_midi(int(states[10]))
    return ns.state_midi(onset)


def _frame_targets_midi(m: float) -> int:
    t = encode_targets([[*NOTE, m]], n_frames=40, frame_rate=FRAME_RATE)
    voiced = t["pitch_class"] != INACTIVE_PC
    assert voiced[5:25].all() and not voiced[:5].any() and not voiced[25:].any()
    octave, pc = int(t["octave"][10]), int(t["pitch_class"][10])
    assert (octave, pc) == midi_to_octave_pc(m)
    return LOWEST_MIDI + 12 * octave + pc


def _reference_notes_midi(m: float) -> int:
    # the transcription task's reference notes: NotesTask.data builds y with this helper
    from heads.tasks import notes_in_span

    notes = notes_in_span(f"[[{NOTE[0]}, {NOTE[1]}, {m!r}]]", 0.0, 1.0)
    assert len(notes) == 1
    return notes[0][2]


def _cleaned_labels_midi(m: float) -> int:
    # MIR-ST500 labels as prepared by the transcription pipeline
    from pipelines.transcription import clean_notes

    notes, counts = clean_notes([[*NOTE, m]])
    assert len(notes) == 1, counts
    return notes[0][2]


def _clustering_pitch_class(m: float) -> int:
    from pipelines.clustering import frame_pitch_classes

    pc = frame_pitch_classes(np.array([0.05, 0.3]), [[*NOTE, m]])
    assert pc[0] == -1
    return int(pc[1])


@pytest.mark.parametrize("m", [60.7, 60.5, 60.5000001, 59.5])
def test_every_user_rounds_the_same_way(m):
    want = midi_number(m)
    assert want == (60 if m == 59.5 else 61)
    assert _note_states_midi(m) == want
    assert _frame_targets_midi(m) == want
    assert _reference_notes_midi(m) == want
    assert _cleaned_labels_midi(m) == want
    assert _clustering_pitch_class(m) == want % 12


def test_just_below_a_half_rounds_down_everywhere():
    m = 60.49
    assert _note_states_midi(m) == _frame_targets_midi(m) == _reference_notes_midi(m) == 60
    assert _cleaned_labels_midi(m) == 60 and _clustering_pitch_class(m) == 0


def test_midi_file_pitch_rounds_halves_up(tmp_path):
    mido = pytest.importorskip("mido")
    from pipelines.transcription import write_midi

    path = write_midi([[0.0, 0.5, 60.5], [0.5, 1.0, 60.7], [1.0, 1.5, 62.49]], tmp_path / "x.mid")
    pitches = [msg.note for msg in mido.MidiFile(str(path)).tracks[0] if msg.type == "note_on" and msg.velocity]
    assert pitches == [61, 61, 62]
