"""Singer identification on Artist20: ``python -m pipelines.singer prepare|build|fit|evaluate|predict``.

With the real dataset (Artist20, ``mp3s-32k/<artist>/<album>/<NN-Title>.mp3``, 20 artists x 6 albums),
step by step (every command works in one work folder, here ``a20``)::

    # 1. manifest: one row per song, split by album (course rule: the album that comes last
    #    alphabetically within each artist is validation; --split paper: 4/1/1 albums per artist)
    python -m pipelines.singer prepare --workdir a20 --raw /data/artist20            # or .../mp3s-32k
    python -m pipelines.singer prepare --workdir a20 --raw /data/artist20 --split paper

    # 2. feature store: demucs (htdemucs) vocals, 5 s segments without overlap, segments quieter
    #    than -35 dBFS RMS dropped (non-vocal parts), every hidden layer of the backbone stored.
    #    --demucs-repo DIR loads demucs weights offline; --no-separate skips separation.
    python -m pipelines.singer build --workdir a20 --backbone mert --device cuda

    # 3. head: softmax-weighted layer sum + linear layer (or --head mlp/logreg/lgbm), lr chosen on valid
    python -m pipelines.singer fit --workdir a20 --backbone mert --head linear

    # 4. scores per 5 s segment and per song (segments of a song aggregated by mean logits, or
    #    --aggregate vote); writes runs/<backbone>-<head>/evaluation.json, confusion_song.png and
    #    a20/results.md (one row per evaluated run)
    python -m pipelines.singer evaluate --workdir a20 --backbone mert --head linear

    # 5. the course's unlabelled test folder (ID.mp3 / ID.wav) -> ID,No.1,No.2,No.3 CSV, rows by ID
    python -m pipelines.singer predict --workdir a20 --backbone mert --head linear \\
        --input /data/artist20_test --out r12345678.csv

Without the dataset, ``prepare --demo`` uses the built-in synthetic corpus (4 singers x 8 clips of
5 s; the demo's own train/valid/test split), stored without separation in 1 s segments.

Splits. ``course`` (default): within each artist, albums sorted with Python's ``sorted`` (code-point
order, as the course's sample code): the last -> ``valid``, the others -> ``train``; the course's test
set is a separate unlabelled folder (``predict``). ``paper`` (Yamamoto, APSIPA 2023, Table I): albums
sorted the same way, the last -> ``test``, the one before -> ``valid``, the rest -> ``train`` (4/1/1 for
the usual 6 albums). Artists with too few albums keep as much as they can and are reported: one album
-> ``train`` (in both modes: a singer seen only in evaluation cannot be scored); two albums with
``paper`` -> the first ``train``, the second ``test`` (no validation album for that artist). Only
albums holding at least one usable file count.

What ``prepare`` skips (reported in ``prepare_report.json``, never fatal): files not at
``<artist>/<album>/<file>`` depth, files that are not .mp3/.wav/.flac, empty (0 byte) files.
Hidden files (``.DS_Store``...) and ``__MACOSX`` folders are ignored silently. Audio is not
decoded here: the build reports unreadable files.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from dataclasses import dataclass

from featurestore.clips import ClipSettings
from featurestore.options import option
from pipelines.command import main
from pipelines.runner import (DEMO_FLAG, PredictRecord, PrepareResult, TaskSpec,  # noqa: F401
                              run_backbone, run_label, run_plan, run_pool, training_clip_settings,
                              write_manifest)

#: Audio suffixes accepted in the Artist20 layout (and in the prediction folder).
AUDIO_SUFFIXES = (".mp3", ".wav", ".flac")
#: Folder name of the 32 kHz release of Artist20.
MP3_ROOT = "mp3s-32k"
#: File written by ``prepare --demo``: the store settings of the demo (no separation, 1 s segments).
#: Store-level defaults (paper, Table I): 5 s segments, htdemucs vocals, RMS floor for vocal segments.
SEGMENT_S = 5.0
DEMO_SEGMENT_S = 1.0
DROP_QUIET_DB = -35.0
SEPARATOR = "htdemucs"
HEADER = ["ID", "No.1", "No.2", "No.3"]


# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------
def artist20_root(raw: Path) -> Path:
    """The ``mp3s-32k`` folder: raw itself, or raw/mp3s-32k (or raw/artist20/mp3s-32k)."""
    raw = Path(raw)
    for cand in (raw / MP3_ROOT, raw / "artist20" / MP3_ROOT):
        if cand.is_dir():
            return cand
    return raw


def _ignored(rel: Path) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)


def album_splits(albums: list[str], mode: str = "course") -> tuple[dict[str, str], str | None]:
    """Split of each album of one artist -> ({album: split}, note or None when nothing unusual).

    course: the last album in sorted order -> valid, the others -> train.
    paper: last -> test, the one before -> valid, the others -> train.
    One album -> train (both modes); two albums with paper -> train, test.
    """
    albums = sorted(set(albums))
    if mode not in ("course", "paper"):
        raise ValueError(f"unknown split mode {mode!r} (course | paper)")
    if len(albums) <= 1:
        return {a: "train" for a in albums}, (f"only {len(albums)} album: all in train" if albums else None)
    out = {a: "train" for a in albums}
    if mode == "course":
        out[albums[-1]] = "valid"
        return out, None
    out[albums[-1]] = "test"
    if len(albums) == 2:
        return out, f"only 2 albums: {albums[0]} -> train, {albums[1]} -> test, no validation album"
    out[albums[-2]] = "valid"
    return out, None


@dataclass(frozen=True)
class SingerOptions:
    """The singer pipeline's own settings (each shown by the sub-commands named in ``commands``)."""

    split: str = option("course", "course: last album (sorted) of each artist -> valid, rest train; paper: last -> "
                                  "test, the one before -> valid, rest train", choices=("course", "paper"),
                        commands=("prepare",))
    segment_seconds: float | None = option(None, f"segment length (default {SEGMENT_S:g}, {DEMO_SEGMENT_S:g} for "
                                                 "the demo)", commands=("build", "predict"))
    drop_quiet_db: float | None = option(None, f"drop segments whose RMS is below this dBFS (default "
                                               f"{DROP_QUIET_DB:g})", commands=("build", "predict"))
    no_separate: bool = option(False, "do not separate vocals with demucs", commands=("build", "predict"))
    demucs_repo: str | None = option(None, "local folder with the demucs weights", commands=("build", "predict"))
    input: str | None = option(None, "folder of unlabelled ID.mp3 / ID.wav files", commands=("predict",))
    out: str | None = option(None, "CSV to write (default WORKDIR/predictions.csv)", commands=("predict",))
    keep_id_text: bool = option(False, "write IDs as the file names spell them (0001), not as integers (1)",
                                commands=("predict",))
    model_path: str | None = option(None, "local folder of the backbone's weights", commands=("predict",))
    num_workers: int = option(2, "audio decoding workers", commands=("predict",))
    batch_seconds: float | None = option(None, "audio seconds per forward batch; not given: 10 on CPU, 80 on CUDA",
                                         commands=("predict",))
    aggregate: str = option("mean", "song-level prediction: mean of segment logits, or majority vote",
                            choices=("mean", "vote"), commands=("evaluate", "predict"))


def prepare_artist20(raw: Path, opts: SingerOptions) -> PrepareResult:
    """Manifest rows of an Artist20 folder (see the module docstring for the splits and the skips)."""
    root = artist20_root(Path(raw))
    mode = opts.split or "course"
    found: list[tuple[str, str, Path]] = []
    skipped: list[dict] = []
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root)
        if _ignored(rel):
            continue
        where = rel.as_posix()
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            skipped.append({"where": where, "reason": "not_audio",
                            "message": f"{where}: not an audio file ({', '.join(AUDIO_SUFFIXES)})",
                            "path": str(p)})
            continue
        if len(rel.parts) != 3:
            skipped.append({"where": where, "reason": "bad_layout",
                            "message": f"{where}: expected {MP3_ROOT}/<artist>/<album>/<song> "
                                       f"(found {len(rel.parts) - 1} folder level(s))", "path": str(p)})
            continue
        try:
            size = p.stat().st_size
        except OSError as e:
            skipped.append({"where": where, "reason": "unreadable", "message": f"{where}: {e}", "path": str(p)})
            continue
        if size == 0:
            skipped.append({"where": where, "reason": "empty", "message": f"{where}: empty file (0 bytes)",
                            "path": str(p)})
            continue
        found.append((rel.parts[0], rel.parts[1], p))

    albums: dict[str, set[str]] = {}
    for artist, album, _ in found:
        albums.setdefault(artist, set()).add(album)
    split_of: dict[tuple[str, str], str] = {}
    for artist in sorted(albums):
        splits, note = album_splits(sorted(albums[artist]), mode)
        if note:
            print(f"note: artist {artist}: {note}")
        split_of.update({(artist, a): s for a, s in splits.items()})
    rows = []
    for artist, album, p in found:
        song = f"{artist}/{album}/{p.stem}"
        rows.append({"path": str(p.resolve()), "id": song, "split": split_of[(artist, album)], "singer": artist,
                     "album": album, "song": song})
    return PrepareResult(rows, skipped)


def prepare_demo(demo_manifest: Path, opts: SingerOptions) -> PrepareResult:
    """The demo corpus as singer rows (album = the demo technique, song = the clip id); marks the
    work folder as a demo one (``demo.flag``: no separation, 1 s segments)."""
    demo_manifest = Path(demo_manifest)
    base = demo_manifest.parent.resolve()
    rows, skipped = [], []
    for i, rec in enumerate(json.loads(demo_manifest.read_text())):
        p = (base / rec["path"]).resolve()
        if not p.is_file():
            skipped.append({"where": f"record {i}", "reason": "missing", "message": f"{p} does not exist",
                            "path": str(p)})
            continue
        rows.append({"path": str(p), "id": rec["id"], "split": rec["split"], "singer": rec["singer"],
                     "album": rec.get("technique", ""), "song": rec["id"]})
    return PrepareResult(rows, skipped)


# ----------------------------------------------------------------------------------------------
# store settings
# ----------------------------------------------------------------------------------------------
def clip_settings(opts: SingerOptions, demo: bool) -> ClipSettings:
    """5 s segments, no overlap, htdemucs vocals, segments below drop_quiet_db (-35 dBFS) dropped.
    Demo work folders (``demo``): 1 s segments and no separation."""
    seg = opts.segment_seconds or (DEMO_SEGMENT_S if demo else SEGMENT_S)
    drop = DROP_QUIET_DB if opts.drop_quiet_db is None else opts.drop_quiet_db
    separate = None if (demo or opts.no_separate) else SEPARATOR
    return ClipSettings(segment_s=seg, min_segment_s=min(1.0, seg), drop_quiet_db=drop, separate=separate,
                        demucs_repo=opts.demucs_repo if separate else None)


# ----------------------------------------------------------------------------------------------
# scoring helpers
# ----------------------------------------------------------------------------------------------
def segment_logits(head, X) -> np.ndarray:
    """Log-probabilities [N, C] of a clip head, for every head and any number of classes. (For a softmax
    head they are the logits minus a per-segment constant, so their mean over a song ranks the classes
    exactly as the mean logits do.)"""
    return np.log(np.clip(np.asarray(head.predict_proba(X), dtype=np.float64), 1e-12, None))


def aggregate(logits, groups, method: str = "mean") -> tuple[list[str], np.ndarray]:
    """Song-level scores from segment logits -> (song ids in order of first appearance, scores [S, C]).

    mean: the mean of the segments' logits. vote: the number of segments whose top-1 is each class,
    plus the mean softmax probability as a tie-break (always < 1, so it only orders equal counts).
    """
    logits = np.asarray(logits, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    if logits.ndim != 2 or len(logits) != len(groups):
        raise ValueError(f"logits [N, C] and groups [N] disagree: {logits.shape} vs {groups.shape}")
    if method not in ("mean", "vote"):
        raise ValueError(f"unknown aggregation {method!r} (mean | vote)")
    ids, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inv = rank[inv]
    ids = ids[order]
    S, C = len(ids), logits.shape[1]
    count = np.bincount(inv, minlength=S).astype(np.float64)[:, None]
    if method == "mean":
        out = np.zeros((S, C))
        np.add.at(out, inv, logits)
        return [str(i) for i in ids], out / count
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    mean_p = np.zeros((S, C))
    np.add.at(mean_p, inv, p)
    votes = np.zeros((S, C))
    np.add.at(votes, (inv, logits.argmax(1)), 1.0)
    return [str(i) for i in ids], votes + 0.999 * mean_p / count


def top3(scores, class_names) -> list[list[str]]:
    """Top-3 class names per row (highest first; ties to the lower class index), padded with ''."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    names = [str(c) for c in class_names]
    return [[names[j] for j in row] + [""] * (3 - len(row)) for row in order]


def shown_ids(ids: list[str], keep_id_text: bool = False) -> list[str]:
    """IDs as the predictions file writes them: integers (``0001`` -> ``1``, as in the course's example
    submission) when every ID is an integer, unless ``keep_id_text``; otherwise as given."""
    ids = [str(i) for i in ids]
    if ids and all(i.isdigit() for i in ids) and not keep_id_text:
        return [str(int(i)) for i in ids]
    return ids


def id_collisions(ids: list[str], names: list[str], keep_id_text: bool = False) -> list[str]:
    """One message per written ID that two or more inputs (``names``) would share."""
    by_id: dict[str, list[str]] = {}
    for shown, name in zip(shown_ids(ids, keep_id_text), names):
        by_id.setdefault(shown, []).append(str(name))
    return [f"ID {i} would be given by {' and '.join(n)}" for i, n in by_id.items() if len(n) > 1]


def write_predictions_csv(path, ids, scores, class_names, keep_id_text: bool = False) -> Path:
    """The course's file: header ``ID,No.1,No.2,No.3``, one row per ID sorted ascending (numerically
    when every ID is an integer), the three highest-scoring singer names, IDs as :func:`shown_ids`
    writes them. IDs that would collide once written are an error."""
    ids = [str(i) for i in ids]
    clashes = id_collisions(ids, ids, keep_id_text)
    if clashes:
        raise ValueError("duplicate IDs: " + "; ".join(clashes))
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids), len(class_names)):
        raise ValueError(f"scores must be [{len(ids)}, {len(class_names)}], got {scores.shape}")
    names = top3(scores, class_names)
    shown = shown_ids(ids, keep_id_text)
    numeric = bool(ids) and all(i.isdigit() for i in ids)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for k in sorted(range(len(ids)), key=lambda k: (int(ids[k]), ids[k]) if numeric else ids[k]):
            w.writerow([shown[k]] + names[k])
    return path


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def evaluate(store, run_dir: Path, opts: SingerOptions, score_split: str | None = None) -> dict:
    """Segment- and song-level scores on the run's scored split (``score_split`` to change it; the
    split that chose the model is refused). Unlabelled clips are left out and counted."""
    from heads import metrics
    from heads.persist import load_head
    from heads.tasks import pooled_features

    run_dir = Path(run_dir)
    method = opts.aggregate or "mean"
    head = load_head(run_dir / "head.json")
    backbone = store.backbone_name(run_backbone(run_dir, run_dir.name))
    plan = run_plan(store, run_dir, SPEC, backbone, score_split)
    rows = plan.score
    classes = [str(c) for c in head.classes_]
    index = {c: i for i, c in enumerate(classes)}
    y = store.labels("singer")[rows].astype(str)
    known = np.array([v in index for v in y], dtype=bool)
    rows, y = rows[known], y[known]
    X = pooled_features(store, backbone, rows, run_pool(run_dir))  # the features the run was fitted on
    logits = segment_logits(head, X)
    yi = np.array([index[v] for v in y], dtype=np.int64)
    seg = metrics.classification_report(yi, logits, class_names=classes)
    files = store.clips["file_id"][rows].astype(str)
    songs, song_scores = aggregate(logits, files, method)
    first = {f: i for i, f in reversed(list(enumerate(files)))}
    song_y = np.array([yi[first[s]] for s in songs], dtype=np.int64)
    song = metrics.classification_report(song_y, song_scores, class_names=classes)
    title = f"{run_dir.name}: singer, {run_label(plan, run_dir)}"
    metrics.plot_confusion(np.array(seg["confusion"]), classes, run_dir / "confusion_segment.png",
                           title=f"{title}\nper segment")
    metrics.plot_confusion(np.array(song["confusion"]), classes, run_dir / "confusion_song.png",
                           title=f"{title}\nper song ({method})")
    with open(run_dir / "song_predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["song", "true", "No.1", "No.2", "No.3"])
        for s, t, names in zip(songs, song_y, top3(song_scores, classes)):
            w.writerow([s, classes[t]] + names)
    from heads.intervals import classification_intervals

    # intervals: segments resampled song by song (a song's segments move together), songs resampled as songs
    ci = {f"segment.{k}": v for k, v in classification_intervals(yi, logits, groups=files).items()}
    ci.update({f"song.{k}": v for k, v in classification_intervals(song_y, song_scores).items()})
    return {"segment": seg, "song": song, "split": plan.score_split, "protocol": plan.describe(),
            "aggregate": method, "backbone_stored": backbone, "unseen_labels": int((~known).sum()), "ci95": ci,
            "items": "songs"}


def describe_evaluation(result: dict, run_dir: Path) -> str:
    """What ``evaluate`` prints of a run: its protocol, then the segment and song scores."""
    from heads import metrics
    from heads.protocol import protocol_label
    from heads.runs import read_metrics

    table = metrics.format_table(
        [{"level": lvl, **{k: result[lvl].get(k) for k in ("n", "accuracy", "top2", "top3", "macro_f1")}}
         for lvl in ("segment", "song")], ["level", "n", "accuracy", "top2", "top3", "macro_f1"])
    return f"singer, {protocol_label(result['protocol'], read_metrics(run_dir))}\n{table}"


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------
def collect_inputs(folder: Path, keep_id_text: bool = False) -> tuple[list[tuple[str, Path]], list[dict]]:
    """(ID, path) of every ``ID.<audio>`` file directly in ``folder`` (sorted), and what was skipped.
    Two files whose IDs would be written alike (``1.wav`` and ``1.mp3``, or ``0001.wav`` and ``1.mp3``,
    see :func:`shown_ids`) are an error naming both: which one is meant cannot be guessed."""
    items, skipped = [], []
    for p in sorted(q for q in Path(folder).iterdir() if q.is_file() and not q.name.startswith(".")):
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            skipped.append({"where": p.name, "reason": "not_audio", "message": f"{p.name}: not an audio file"})
        elif p.stat().st_size == 0:
            skipped.append({"where": p.name, "reason": "empty", "message": f"{p.name}: empty file (0 bytes)"})
        else:
            items.append((p.stem, p.resolve()))
    clashes = id_collisions([i for i, _ in items], [p.name for _, p in items], keep_id_text)
    if clashes:
        raise ValueError(f"{folder}: " + "; ".join(clashes) + " (rename or remove one; --keep-id-text keeps "
                         "leading zeros)")
    return items, skipped


def predict(pipe, rd: Path, backbone: str, opts: SingerOptions, device: str = "cpu",
            progress: bool = True) -> PredictRecord:
    """Top-3 singers per file of ``opts.input`` -> ``opts.out`` (course format) with the fitted run ``rd``."""
    from dataclasses import replace

    from featurestore import open_store
    from featurestore.build import ExtractSettings, build
    from heads.persist import load_head
    from heads.tasks import pooled_features
    from pipelines.task_pipeline import PipelineError

    work = Path(pipe.workdir)
    if not opts.input or not Path(opts.input).is_dir():
        raise PipelineError(f"input must be a folder of ID.mp3 / ID.wav files (got {opts.input!r})")
    items, skipped = collect_inputs(Path(opts.input), opts.keep_id_text)
    for s in skipped:
        print(f"skipped [{s['reason']}] {s['message']}")
    if not items:
        raise PipelineError(f"no audio file in {opts.input}")
    head = load_head(rd / "head.json")
    pool = run_pool(rd)
    classes = [str(c) for c in head.classes_]
    cs = training_clip_settings(SPEC, work, opts, opts.demucs_repo)
    ext = ExtractSettings(batch_s=opts.batch_seconds)
    common = dict(extract=ext, model_path=opts.model_path, device=device,
                  num_workers=opts.num_workers, overwrite=True, progress=progress,
                  vocals_cache=work / "predict_store.zarr.vocals")  # one cache: each file separated once

    def run(rows_, name, settings):
        manifest = write_manifest([{"path": str(p), "id": i} for i, p in rows_], work / f"{name}.csv")
        rep = build(manifest, work / f"{name}.zarr", [backbone], clip_settings=settings, **common)
        st = open_store(work / f"{name}.zarr")
        bb = next(iter(rep.backbones))
        z = segment_logits(head, pooled_features(st, bb, pool=pool))
        ids, sc = aggregate(z, st.clips["file_id"], opts.aggregate)
        return dict(zip(ids, sc)), rep.skipped

    scores, skips = run(items, "predict_store", cs)
    no_segments = {s.get("path") for s in skips if s.get("reason") == "no_segments"}
    quiet = [(i, p) for i, p in items if i not in scores and str(p) in no_segments]
    if quiet and cs.drop_quiet_db is not None:
        # nothing above the RMS floor (e.g. an instrumental file): keep all its segments rather than none
        print(f"note: {len(quiet)} file(s) had no segment above {cs.drop_quiet_db} dBFS: "
              "predicted from all their segments")
        more, skips2 = run(quiet, "predict_store_all", replace(cs, drop_quiet_db=None))
        scores.update(more)
        done = {str(p) for i, p in quiet if i in more}
        skips = [s for s in skips if s.get("path") not in done] + skips2
    missing = [i for i, _ in items if i not in scores]
    if missing:
        # a row per ID is required: files with no usable audio get the training prior (most frequent first)
        prior = np.zeros(len(classes))
        try:
            train = open_store(work / "store.zarr")
            lab = train.labels("singer")[train.split_indices("train")].astype(str)
            prior = np.array([np.sum(lab == c) for c in classes], dtype=np.float64)
        except (FileNotFoundError, ValueError, KeyError):
            pass
        print(f"warning: no usable audio in {len(missing)} file(s) ({', '.join(missing[:10])}"
              f"{'...' if len(missing) > 10 else ''}): their rows rank singers by training frequency",
              file=sys.stderr)
        missing_paths = {str(p) for i, p in items if i in set(missing)}
        for s in skips:
            if s.get("path") in missing_paths:
                print(f"  - [{s['reason']}] {s['message']}", file=sys.stderr)
        for i in missing:
            scores[i] = prior
    ids = [i for i, _ in items]
    out = Path(opts.out) if opts.out else work / "predictions.csv"
    write_predictions_csv(out, ids, np.stack([scores[i] for i in ids]), classes, keep_id_text=opts.keep_id_text)
    return PredictRecord(out, len(ids), list(skipped) + list(skips))


SPEC = TaskSpec(
    name="singer",
    description="singer identification (Artist20): per 5 s segment and per song",
    heads_task="singer",
    default_head="linear",
    prepare=prepare_artist20,
    prepare_demo=prepare_demo,
    clip_settings=clip_settings,
    evaluate=evaluate,
    summary_keys=["segment.accuracy", "segment.top3", "segment.macro_f1", "song.accuracy", "song.top3",
                  "song.macro_f1"],
    predict=predict,
    options=SingerOptions,
    describe=describe_evaluation,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
