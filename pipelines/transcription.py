"""Singing voice transcription on MIR-ST500: ``python -m pipelines.transcription prepare|build|fit|evaluate|predict``.

From the dataset to notes, step by step (WORKDIR is any folder; the backbone any registry name)::

    # 1. manifest: MIR-ST500_corrected.json + one audio folder per song -> WORKDIR/manifest.csv
    python -m pipelines.transcription prepare --raw /data/MIR-ST500 --workdir work/st500
    # 2. feature store of whole songs (long audio is windowed by the build); add --separate to run
    #    demucs (htdemucs) on the audio first, when you have mixtures only (see "Dataset layout")
    python -m pipelines.transcription build --workdir work/st500 --backbone mert-v0-public
    # 3. a frame head (crf: linear-chain CRF over note states; frames: the 20-output baseline)
    python -m pipelines.transcription fit --workdir work/st500 --backbone mert-v0-public --head crf
    # 4. song-level scores on the test split (songs 401-500), notes and MIDI of every song
    python -m pipelines.transcription evaluate --workdir work/st500 --backbone mert-v0-public --head crf
    # 5. notes (.txt, mir_eval format) and MIDI (.mid) for your own recordings
    python -m pipelines.transcription predict --workdir work/st500 --backbone mert-v0-public --head crf \\
        --input my_songs/ --out my_notes/

``prepare --demo`` instead of ``--raw`` runs the same steps on the built-in synthetic demo corpus
(no download; ``build --backbone crepe`` takes well under a minute on a CPU).

Dataset layout (``--raw``)
--------------------------
``<raw>/MIR-ST500_corrected.json`` (or ``--labels FILE``): ``{song_id: [[onset_s, offset_s, midi], ...]}``,
and ``<raw>/<song_id>/`` per song with its audio. Audio file names, matched case-insensitively, any
of .wav/.flac/.mp3/.ogg:

- vocals: stem ``vocals`` or ``vocal`` (``Vocals.wav``, ``vocal.wav`` ...), otherwise any stem that
  contains ``vocal`` but not ``no``/``non``/``without`` before it (``song_vocals.flac`` yes,
  ``no_vocals.wav`` no);
- mixture: stem ``mixture`` or ``mix`` (``Mixture.mp3``, ``mixture.wav`` ...), otherwise the single
  audio file of the folder that is neither a vocals file nor a stem of another source (names with
  ``accompaniment``, ``instrumental``, ``inst``, ``karaoke``, ``backing``, ``bgm``, ``drums``, ``bass``,
  ``other``, ``no_vocals`` ...), e.g. ``172.mp3``.

Song folders are ``<raw>/<number>/`` or one level down (``<raw>/train/1/``, ``<raw>/test/401/``, the
layout of the MIR-ST500 download scripts); folder and label names are song numbers.

``--audio auto`` (default) takes the vocals when the folder has them, else the mixture; ``--audio
vocals`` / ``--audio mixture`` insist on one kind and skip songs without it. Each manifest row says
which it took (``uses``: ``vocals`` | ``mixture``). ``build --separate`` separates vocals with demucs
(``htdemucs``, or ``--separate MODEL``; weights from ``--demucs-repo DIR`` or demucs' own lookup,
cached per file in ``WORKDIR/store.zarr.vocals/``). Separation is a store-level setting of
featurestore: it applies to *every* file of the store, vocals stems included (demucs on an isolated
voice is close to the identity, but costs time). So: with stems, leave ``--separate`` off; with
mixtures only (the paper's setup: demucs vocals of the mixtures), use ``prepare --audio mixture`` and
``build --separate``.

Splits: songs 1-400 are ``train``, 401-500 ``test`` (the official split). ``--valid-songs``
(default ``10%``: a share of the train songs, at least one; or a count such as ``40``) holds out the
last train songs by number (songs 361-400 for 10 % of 400) as ``valid``, for early stopping and the
learning-rate choice. It is cut to leave at least one train song, a warning is printed when it takes
more than a quarter of the train songs, and ``--valid-songs 0`` leaves the choice to heads (a holdout
of train songs drawn with the seed, :mod:`heads.protocol`).

Bad input is reported (``WORKDIR/prepare_report.json`` and the console) and skipped, never fatal:
a label entry whose audio folder or file is missing; an audio folder without labels; notes with
offset <= onset, a negative onset, a pitch outside MIDI 0-127 or not three numbers (those notes are
dropped, one line per song with the count); songs left with no note. Overlapping notes (the track
is monophonic) are fixed by cutting the earlier note's offset at the later note's onset (a note
that would be left with no duration, i.e. two notes with the same onset, is dropped), one line per
song. Pitches are rounded to integers (MIR-ST500's are integral floats). A labels file that is
missing or is not valid JSON of that shape is a clear error: exit status 2.

Frames, decoding, scoring
-------------------------
The store holds whole songs (no segmenting), so frame targets are made by the heads at the
backbone's own frame rate (50 Hz for the 16 kHz models, 75 Hz for MERT-v1) and each song is
decoded in one piece. Should a store hold a song in several clips, each clip is decoded with its
own frame times and the notes are joined per song before scoring. Scores follow REFERENCES.md
section 2: ``mir_eval.transcription`` defaults per song (COnPOff, COnP, COn precision / recall /
F1), averaged over songs (:func:`heads.metrics.transcription_report`).

Outputs of ``evaluate`` in the run folder: ``evaluation.json`` (mean and per-song scores),
``notes/<song>.txt`` (``onset offset Hz`` per line, the mir_eval format) and ``midi/<song>.mid``;
``predict`` writes the same pair per input file into one flat ``--out`` folder. ``<song>`` is the
song id through :func:`featurestore.names.safe_name` (percent-encoded: ``a/b`` -> ``a%2Fb``), so two
ids never share a file.

MIDI is written with ``mido``: a tiny pure-Python dependency that gives exact control of ticks and
tempo (so note times survive a round trip to within one tick); ``pretty_midi`` would drag in more
(numpy-heavy helpers and its own dependencies) for no gain here.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from featurestore.clips import ClipSettings
from featurestore.manifest import AUDIO_SUFFIXES, Skip
from featurestore.names import safe_name
from heads.notes import midi_number
from dataclasses import dataclass

from featurestore.options import SpecError, option
from pipelines.command import main
from pipelines.runner import PredictRecord, PrepareResult, TaskSpec, run_backbone, run_plan, training_clip_settings

LABELS_FILE = "MIR-ST500_corrected.json"
#: songs up to this number are train, the others test (the official MIR-ST500 split)
LAST_TRAIN_SONG = 400
#: default size of the validation split: a share of the train songs (at least one song)
DEFAULT_VALID_SONGS = "10%"
#: a validation split above this share of the train songs is warned about
VALID_WARN_SHARE = 0.25

_VOCAL_STEMS = ("vocals", "vocal")
_MIXTURE_STEMS = ("mixture", "mix")
_NOT_VOCALS = re.compile(r"(no|non|without)[ _\-.]?vocal")
_NOT_MIXTURE = re.compile(r"accompan|instrument|^inst|karaoke|backing|bgm|drums|bass|other|"
                          r"(no|non|without)[ _\-.]?vocal")
#: preferred suffix when a folder has the same kind of file in several formats
_SUFFIX_RANK = {".wav": 0, ".flac": 1, ".ogg": 2, ".mp3": 3}


# ----------------------------------------------------------------------------------------------
# MIR-ST500 adapter
# ----------------------------------------------------------------------------------------------
def _skip(where: str, reason: str, message: str) -> dict:
    return Skip(where, reason, message).as_dict()


def _audio_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES),
                  key=lambda p: (_SUFFIX_RANK.get(p.suffix.lower(), 9), p.name.lower()))


def _is_vocals(p: Path) -> bool:
    stem = p.stem.lower()
    return "vocal" in stem and not _NOT_VOCALS.search(stem)


def find_audio(folder: Path) -> dict[str, Path | None]:
    """The vocals and mixture files of a song folder -> ``{"vocals": path | None, "mixture": path | None}``
    (names in the module docstring). ``"ambiguous"`` holds the candidates when no mixture can be
    told apart (several unnamed audio files)."""
    files = _audio_files(folder)
    vocals = [p for p in files if _is_vocals(p)]
    exact_v = [p for p in vocals if p.stem.lower() in _VOCAL_STEMS]
    others = [p for p in files if not _is_vocals(p) and not _NOT_MIXTURE.search(p.stem.lower())]
    exact_m = [p for p in others if p.stem.lower() in _MIXTURE_STEMS]
    out: dict = {"vocals": (exact_v or vocals or [None])[0], "mixture": None, "ambiguous": []}
    if exact_m:
        out["mixture"] = exact_m[0]
    elif len(others) == 1:
        out["mixture"] = others[0]
    elif len(others) > 1:
        out["ambiguous"] = others
    return out


def clean_notes(raw_notes) -> tuple[list[list], dict]:
    """Validate one song's notes -> (notes sorted by onset, monophonic, ``[[on, off, midi int], ...]``,
    counts). Notes that are not three finite numbers, have offset <= onset or a negative onset, or a
    pitch outside MIDI 0-127 are dropped; overlaps are fixed by cutting the earlier note's offset at
    the later onset (a note left with no duration is dropped). counts: ``malformed``, ``bad_time``,
    ``bad_pitch``, ``overlaps`` (fixed), ``same_onset`` (dropped by the fix)."""
    counts = {"malformed": 0, "bad_time": 0, "bad_pitch": 0, "overlaps": 0, "same_onset": 0}
    good = []
    for n in raw_notes:
        try:
            on, off, m = (float(v) for v in n)
        except (TypeError, ValueError):
            counts["malformed"] += 1
            continue
        if not all(math.isfinite(v) for v in (on, off, m)):
            counts["malformed"] += 1
        elif off <= on or on < 0:
            counts["bad_time"] += 1
        elif not 0 <= midi_number(m) <= 127:
            counts["bad_pitch"] += 1
        else:
            good.append([on, off, midi_number(m)])
    good.sort(key=lambda n: (n[0], n[1]))
    out = []
    for i, n in enumerate(good):
        if i + 1 < len(good) and good[i + 1][0] < n[1]:
            counts["overlaps"] += 1
            n = [n[0], good[i + 1][0], n[2]]
            if n[1] <= n[0]:
                counts["same_onset"] += 1
                continue
        out.append(n)
    return out, counts


def _song_number(key) -> int | None:
    try:
        v = int(str(key).strip())
    except ValueError:
        return None
    return v if v >= 1 else None


def load_labels(path: Path) -> dict:
    """``{song_id: notes}`` from the labels JSON. Raises ValueError with a clear message when the
    file is missing, not JSON, or not an object of lists."""
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist (pass --labels FILE if it lives elsewhere)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{song_id: [[onset_s, offset_s, midi], ...]}}, "
                         f"got a JSON {type(data).__name__}")
    return data


def prepare_mirst500(raw: Path, opts: TranscriptionOptions) -> PrepareResult:
    """MIR-ST500 folder -> manifest rows ``{path, id, split, notes, uses}`` and a skip report
    (rules in the module docstring). A bad labels file gives no rows and one ``bad_labels`` entry
    (the runner then exits with status 2)."""
    raw = Path(raw)
    mode = opts.audio or "auto"
    valid_spec = parse_valid_songs(DEFAULT_VALID_SONGS if opts.valid_songs is None else opts.valid_songs)
    labels_path = Path(opts.labels or raw / LABELS_FILE)
    skipped: list[dict] = []
    try:
        labels = load_labels(labels_path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return PrepareResult([], [_skip(str(labels_path), "bad_labels", str(e))])

    folders: dict[int, Path] = {}
    for d in sorted(p for p in raw.iterdir() if p.is_dir()):
        subs = [d] if d.name.isdigit() else sorted(q for q in d.iterdir() if q.is_dir() and q.name.isdigit())
        for q in subs:
            num = _song_number(q.name)
            if num is None:
                continue
            if num in folders:
                skipped.append(_skip(str(q), "duplicate_song", f"{q}: song {num} already found in {folders[num]}"))
            else:
                folders[num] = q
    songs: dict[int, str] = {}
    for key in labels:
        num = _song_number(key)
        if num is None:
            skipped.append(_skip(f"labels {key!r}", "bad_song_id", f"label key {key!r} is not a song number"))
        elif num in songs:
            skipped.append(_skip(f"labels {key!r}", "duplicate_song",
                                 f"label key {key!r}: song {num} is already labelled as {songs[num]!r}"))
        else:
            songs[num] = key
    for num, d in folders.items():
        if num not in songs and _audio_files(d):
            skipped.append(_skip(str(d), "no_labels", f"{d}: audio folder without labels in {labels_path.name}"))

    rows = []
    for num in sorted(songs):
        key = songs[num]
        sid, where = str(num), f"song {num}"
        d = folders.get(num)
        if d is None:
            skipped.append(_skip(where, "missing_audio", f"{where}: labelled, but no folder {raw / key}"))
            continue
        found = find_audio(d)
        if mode == "vocals":
            path, uses = found["vocals"], "vocals"
        elif mode == "mixture":
            path, uses = found["mixture"], "mixture"
        else:
            path, uses = (found["vocals"], "vocals") if found["vocals"] else (found["mixture"], "mixture")
        if path is None:
            if found["ambiguous"] and uses == "mixture":
                names = ", ".join(p.name for p in found["ambiguous"])
                skipped.append(_skip(where, "ambiguous_audio", f"{where}: cannot tell the mixture among {names} "
                                                              "(name it Mixture.*)"))
            else:
                what = {"vocals": "vocals file", "mixture": "mixture file"}.get(mode, "audio file")
                skipped.append(_skip(where, "missing_audio", f"{where}: no {what} in {d}"))
            continue
        raw_notes = labels[key]
        if not isinstance(raw_notes, list):
            skipped.append(_skip(where, "bad_labels", f"{where}: labels are not a list of notes"))
            continue
        notes, c = clean_notes(raw_notes)
        dropped = c["malformed"] + c["bad_time"] + c["bad_pitch"]
        if dropped:
            parts = [f"{c[k]} {txt}" for k, txt in (("bad_time", "with offset <= onset or a negative onset"),
                                                    ("bad_pitch", "with a pitch outside MIDI 0-127"),
                                                    ("malformed", "not [onset, offset, midi] numbers")) if c[k]]
            skipped.append(_skip(where, "bad_notes", f"{where}: dropped {dropped} of {len(raw_notes)} notes "
                                                     f"({'; '.join(parts)})"))
        if c["overlaps"]:
            extra = f"; {c['same_onset']} note(s) sharing the next note's onset dropped" if c["same_onset"] else ""
            skipped.append(_skip(where, "overlapping_notes",
                                 f"{where}: {c['overlaps']} overlapping note(s) fixed by cutting the earlier note's "
                                 f"offset at the later onset{extra}"))
        if not notes:
            skipped.append(_skip(where, "no_notes", f"{where}: no usable note left; song skipped"))
            continue
        rows.append({"path": str(path.resolve()), "id": sid, "split": "train" if num <= LAST_TRAIN_SONG else "test",
                     "notes": notes, "uses": uses})

    train = [r for r in rows if r["split"] == "train"]
    k = valid_song_count(valid_spec, len(train))
    if k:
        for r in sorted(train, key=lambda r: int(r["id"]))[-k:]:
            r["split"] = "valid"
    mixtures = sum(r["uses"] == "mixture" for r in rows)
    if mixtures:
        print(f"note: {mixtures} song(s) use the mixture (no vocals file); `build --separate` separates the "
              "vocals with demucs")
    return PrepareResult(rows, skipped)


def parse_valid_songs(text) -> float | int:
    """``--valid-songs``: ``"10%"`` -> 0.1 (a share of the train songs), ``"40"`` -> 40 (a count); a value
    already parsed passes through."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    text = str(text).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share < 1:
                raise ValueError
            return share
        n = int(text)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise SpecError("valid_songs", f"{text!r}: a count of songs (40) or a share of the train songs "
                         "(10%, under 100%)") from None


def _valid_songs_option(text: str) -> float | int:
    try:
        return parse_valid_songs(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def valid_song_count(spec: float | int, n_train: int) -> int:
    """How many of ``n_train`` train songs become ``valid``: a share (float, at least one song) or a
    count (int), cut to leave one train song; prints a note when cut and a warning above a quarter."""
    if n_train == 0:
        return 0
    want = spec if isinstance(spec, int) else (max(1, int(np.floor(spec * n_train + 0.5))) if spec > 0 else 0)
    k = max(0, min(want, n_train - 1))
    if k < want:
        print(f"note: --valid-songs {want} cut to {k} (leaving one train song)")
    if k > VALID_WARN_SHARE * n_train:
        print(f"warning: the validation split takes {k} of {n_train} train songs ({100 * k / n_train:.0f} %, over "
              f"{100 * VALID_WARN_SHARE:.0f} %): the head is trained on {n_train - k} songs", file=sys.stderr)
    return k


def prepare_demo(demo_manifest: Path, opts: TranscriptionOptions) -> PrepareResult:
    """The demo corpus as rows (its notes and splits; solo synthetic voice, so ``uses`` = vocals).
    Writes ``WORKDIR/demo.flag``, by which later commands recognise a demo work folder."""
    demo_manifest = Path(demo_manifest)
    records = json.loads(demo_manifest.read_text())
    rows = [{"path": str((demo_manifest.parent / r["path"]).resolve()), "id": r["id"], "split": r["split"],
             "notes": [[float(on), float(off), midi_number(m)] for on, off, m in r["notes"]], "uses": "vocals"}
            for r in records]
    return PrepareResult(rows, [])


def clip_settings(opts: TranscriptionOptions, demo: bool) -> ClipSettings:
    """Whole songs (featurestore windows long audio at extraction), optional demucs separation.
    The demo (whole 5 s files of a solo voice) is never separated."""
    separate = opts.separate
    if separate and demo:
        print("note: --separate ignored for the demo (a solo synthetic voice)")
        separate = None
    return ClipSettings(segment_s=None, separate=separate, demucs_repo=opts.demucs_repo)


@dataclass(frozen=True)
class TranscriptionOptions:
    """The transcription pipeline's own settings (each shown by the sub-commands named in ``commands``)."""

    labels: str | None = option(None, f"labels JSON; if not given, RAW/{LABELS_FILE}", commands=("prepare",))
    audio: str = option("auto", "which audio of a song folder: auto = vocals when present, else the mixture",
                        choices=("auto", "vocals", "mixture"), commands=("prepare",))
    valid_songs: str = option(DEFAULT_VALID_SONGS, "validation split: the last train songs by number, a share of "
                                                   "them (10%%) or a count (40); 0 = none (heads carve a holdout of "
                                                   "train songs)", type=_valid_songs_option, commands=("prepare",))
    separate: str | None = option(None, "separate vocals with demucs first (every file of the store; default model "
                                        "htdemucs)", nargs="?", const="htdemucs", metavar="MODEL", commands=("build",))
    demucs_repo: str | None = option(None, "local folder with the demucs weights", commands=("build", "predict"))
    piano_roll: str | None = option(None, "song (clip file id) drawn in RUN/piano_roll.png and .svg, predicted notes "
                                          "over the reference; not given: the first scored song", metavar="SONG",
                                    commands=("evaluate",))
    input: str | None = option(None, "folder of audio files to transcribe", commands=("predict",))
    out: str | None = option(None, "output folder (default: WORKDIR/predictions)", commands=("predict",))
    model_path: str | None = option(None, "local folder of the backbone's weights (as given to build)",
                                    commands=("predict",))
    num_workers: int | None = option(None, "audio decoding workers; not given: 2", commands=("predict",))


# ----------------------------------------------------------------------------------------------
# MIDI
# ----------------------------------------------------------------------------------------------
def write_midi(notes, path, tempo_bpm: float = 120, ticks_per_beat: int = 480, velocity: int = 100) -> Path:
    """Write ``[[onset_s, offset_s, midi], ...]`` as a type-0 MIDI file (one track, channel 0).

    Times are converted with the tempo actually stored (``mido.bpm2tempo(tempo_bpm)`` microseconds
    per beat), rounded to the nearest tick (1/960 s at the defaults), so a reader gets each onset and
    offset back within half a tick; a note is at least one tick long. Pitches are rounded and clipped
    to 0-127. At equal ticks note-offs come before note-ons, so a repeated pitch is re-attacked.
    """
    import mido

    tempo = mido.bpm2tempo(tempo_bpm)
    tick_s = tempo / 1e6 / ticks_per_beat
    events = []  # (tick, 0 = off / 1 = on, pitch)
    for on, off, m in notes:
        p = int(np.clip(midi_number(m), 0, 127))
        a = max(0, int(round(float(on) / tick_s)))
        b = max(a + 1, int(round(float(off) / tick_s)))
        events += [(a, 1, p), (b, 0, p)]
    events.sort()
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    now = 0
    for tick, kind, p in events:
        msg = "note_on" if kind else "note_off"
        track.append(mido.Message(msg, note=p, velocity=int(velocity) if kind else 0, channel=0, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    mf = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    mf.tracks.append(track)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mf.save(str(path))
    return path


# ----------------------------------------------------------------------------------------------
# decoding, evaluation, prediction
# ----------------------------------------------------------------------------------------------
def decode_songs(store, backbone: str, head, rows) -> dict[str, dict]:
    """Decode the clips ``rows`` with ``head`` and join them per song (file_id).

    Returns ``{song: {"notes": [[on, off, midi], ...] (seconds of the song's file), "span": (start_s,
    end_s) covered by its clips, "rows": [...]}}``."""
    songs: dict[str, dict] = {}
    fids = store.clips["file_id"]
    _decode_rows(store, backbone, head, rows, fids, songs)
    for s in songs.values():
        s["notes"].sort()
    return songs


def _decode_rows(store, backbone, head, rows, fids, songs) -> None:
    """Decode clip rows (several per batch, read lazily from the store) and gather their notes per song."""
    from featurestore.datasets import ClipFrames

    rows = [int(r) for r in rows if store.n_frames(backbone)[int(r)] > 0]
    if not rows:
        return
    t0 = [float(store.frame_times(r, backbone)[0]) for r in rows]
    for r, notes in zip(rows, head.predict(ClipFrames(store, backbone, rows), offsets=t0)):
        s = songs.setdefault(str(fids[r]), {"notes": [], "span": (math.inf, -math.inf), "rows": []})
        s["notes"] += [[float(on), float(off), midi_number(m)] for on, off, m in notes]
        s["span"] = (min(s["span"][0], float(store.clips["start_s"][r])),
                     max(s["span"][1], float(store.clips["end_s"][r])))
        s["rows"].append(r)


def _write_song(notes, folder_txt: Path, folder_mid: Path, name: str) -> None:
    from heads.notes import notes_to_arrays, write_notes

    folder_txt.mkdir(parents=True, exist_ok=True)
    write_notes(folder_txt / f"{name}.txt", *notes_to_arrays(notes))
    write_midi(notes, folder_mid / f"{name}.mid")


def evaluate(store, run_dir: Path, opts: TranscriptionOptions, score_split: str | None = None) -> dict:
    """Decode every song of the run's scored split (``score_split`` to change it; the split that chose
    the model is refused), score each song with mir_eval and average over songs; write
    ``notes/<song>.txt`` and ``midi/<song>.mid`` in the run folder."""
    from heads.metrics import transcription_report
    from heads.notes import notes_to_arrays
    from heads.persist import load_head
    from heads.tasks import notes_in_span

    backbone = store.backbone_name(run_backbone(run_dir, Path(run_dir).name))
    head = load_head(Path(run_dir) / "head.json")
    plan = run_plan(store, run_dir, SPEC, backbone, score_split)
    labels = store.labels("notes")
    songs = decode_songs(store, backbone, head, plan.score)
    pairs, counts = {}, {}
    for sid, s in songs.items():
        ref = notes_in_span(labels[s["rows"][0]], *s["span"])
        _write_song(s["notes"], Path(run_dir) / "notes", Path(run_dir) / "midi", safe_name(sid))
        pairs[sid] = (*notes_to_arrays(ref), *notes_to_arrays(s["notes"]))
        counts[sid] = (len(ref), len(s["notes"]))
    rep = transcription_report(pairs)
    per_song = {sid: {**{k: v for k, v in sc.items() if k != "raw"}, "n_ref": counts[sid][0],
                      "n_est": counts[sid][1]} for sid, sc in rep["per_song"].items()}
    from heads.intervals import mean_intervals
    from heads.run_plots import plot_piano_roll

    chosen = opts.piano_roll or (sorted(songs)[0] if songs else None)
    if chosen is not None and chosen not in songs:
        raise SpecError("piano_roll", f"{chosen!r}: no such song on the scored split ({plan.score_split}); songs: "
                         f"{', '.join(sorted(songs)[:10])}{' ...' if len(songs) > 10 else ''}")
    if chosen is not None:
        s = songs[chosen]
        ref = notes_in_span(labels[s["rows"][0]], *s["span"])
        sc = rep["per_song"][chosen]["COnPOff"]["f1"]
        plot_piano_roll(np.asarray(ref, dtype=float), np.asarray(s["notes"], dtype=float),
                        Path(run_dir) / "piano_roll.png",
                        f"{Path(run_dir).name}: song {chosen} ({plan.label()}), COnPOff F1 {100 * sc:.1f} %")
    ci = mean_intervals({f"mean.{name}.f1": [sc[name]["f1"] for sc in per_song.values()] for name in rep["mean"]})
    return {"mean": rep["mean"], "per_song": per_song, "n_songs": rep["n_songs"], "split": plan.score_split,
            "protocol": plan.describe(), "ci95": ci}


def describe_evaluation(result: dict, run_dir: Path) -> str:
    """What ``evaluate`` prints of a run: the songs decoded, its protocol and where the notes went."""
    from heads.protocol import protocol_label

    return (f"{result['n_songs']} songs decoded, {protocol_label(result['protocol'])}; notes -> "
            f"{Path(run_dir) / 'notes'}, MIDI -> {Path(run_dir) / 'midi'}")


def predict(pipe, rd: Path, backbone: str, opts: TranscriptionOptions, device: str = "cpu",
            progress: bool = True) -> PredictRecord:
    """``opts.input`` folder of audio files -> ``WORKDIR/predict_store.zarr`` (the training store's clip
    settings, the same backbone) -> ``<out>/<file id>.txt`` (mir_eval notes) and ``.mid`` per file."""
    from featurestore import open_store
    from featurestore.build import build
    from heads.persist import load_head
    from pipelines.task_pipeline import PipelineError

    work = Path(pipe.workdir)
    if not opts.input or not Path(opts.input).is_dir():
        raise PipelineError(f"input must be a folder of audio files (got {opts.input!r})")
    inp = Path(opts.input)
    out = Path(opts.out) if opts.out else work / "predictions"
    store_path = work / "predict_store.zarr"
    report = build(inp, store_path, [backbone], clip_settings=training_clip_settings(SPEC, work, opts, opts.demucs_repo),
                   model_path=opts.model_path, device=device, num_workers=opts.num_workers or 2, overwrite=True,
                   progress=progress)
    for s in report.skipped:
        print(f"skipped [{s['reason']}] {s['message']}")
    store = open_store(store_path)
    backbone = store.backbone_name(backbone)
    _check_same_weights(work / "store.zarr", store, backbone)
    head = load_head(rd / "head.json")
    songs = decode_songs(store, backbone, head, range(len(store)))
    for sid, s in songs.items():  # one flat folder, file names by featurestore.names.safe_name
        _write_song(s["notes"], out, out, safe_name(sid))
    return PredictRecord(out, len(songs), list(report.skipped), "one .txt (onset offset Hz) and .mid per file")


def _check_same_weights(train_store: Path, store, backbone: str) -> None:
    from featurestore import open_store

    try:
        want = open_store(train_store).info(backbone)["identity"].get("weights_hash")
    except Exception:  # noqa: BLE001 - no training store, or backbone not in it: nothing to compare
        return
    have = store.info(backbone)["identity"].get("weights_hash")
    if want and have and want != have:
        print(f"warning: {backbone} weights differ from those the head was trained on (pass the same "
              "--model-path as for build)", file=sys.stderr)


SPEC = TaskSpec(
    name="transcription",
    description="singing voice transcription (MIR-ST500): notes with onset, offset and pitch",
    heads_task="transcription",
    default_head="crf",
    prepare=prepare_mirst500,
    prepare_demo=prepare_demo,
    clip_settings=clip_settings,
    evaluate=evaluate,
    summary_keys=["mean.COnPOff.f1", "mean.COnP.f1", "mean.COn.f1"],
    predict=predict,
    options=TranscriptionOptions,
    describe=describe_evaluation,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
