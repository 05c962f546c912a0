"""``python -m benchmarks.heads_fit``: time to fit each head, the CRF against the frame baseline, and
the layer sweep (one pass, L probes) against L separate single-layer fits, all measured in one run.

Stores:

- default: the demo store (built if missing): 1 s clips of the demo corpus;
- ``--corpus-minutes M``: a corpus of the same synthetic singers (slow attacks, release tails,
  breaths; :mod:`featurestore.demo`) of ``M`` minutes in 20 s songs, 6 singers, stored whole
  (no segmentation) with CREPE tiny; built once under ``$SINGFRONT_HOME/bench`` and reused.
  Per singer the last song is the test split and the one before the selection (valid) split;
- ``--store``: any store with a ``notes`` column (transcription) and a clip label (``--label``).

Transcription heads (``frames``, ``crf``, ``crf`` with ``--context`` seconds of temporal context)
are fitted for the same number of epochs (``--epochs``, no early stop: equal work) at one learning
rate, each keeping its best epoch on the selection split (valid), and scored on the test songs
(COnPOff / COnP / COn F1, mir_eval, mean over songs). For each it reports:

- ``fit_s``: wall time of ``fit`` (reading the split, training, the per-epoch validation);
- ``train fps``: training frames x epochs / fit_s (frames per second of the whole fit);
- ``decode fps``: test frames / wall time of ``predict`` on the test songs (batched);
- ``val_share``: the share of the epochs' wall time spent on validation (decoding the selection
  split every epoch);
- ``crf / frames``: the CRF's fit time over the frame baseline's, measured in this run.

Times are ``time.perf_counter`` wall clock on whatever else the machine is doing: the JSON records
the load average before and after so a busy run can be recognised.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from featurestore.cli import HelpFormatter
from featurestore import open_store
from heads import metrics
from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.fit import ensure_demo_store
from heads.frame_heads import CRFHead, FrameClassifierHead
from heads.notes import notes_to_arrays
from heads.tasks import NotesTask, make_task

#: Songs of the ``--corpus-minutes`` corpus: seconds each, and singers.
SONG_S, SINGERS = 20.0, 6


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def ensure_corpus_store(minutes: float) -> Path:
    """The ``minutes``-long benchmark store (see the module docstring), built if missing."""
    from featurestore.build import build, default_demo_dir
    from featurestore.clips import ClipSettings
    from featurestore.demo import make_demo_corpus

    per_singer = max(3, math.ceil(minutes * 60.0 / SONG_S / SINGERS))
    home = default_demo_dir().parent / "bench"
    path = home / f"store-{SINGERS}x{per_singer}x{SONG_S:g}s.zarr"
    try:
        if "crepe-tiny" in open_store(path).backbones:
            return path
    except (FileNotFoundError, ValueError):
        pass
    print(f"building the benchmark store at {path} ({SINGERS} singers x {per_singer} songs x {SONG_S:g} s) ...",
          file=sys.stderr)
    manifest = make_demo_corpus(home / f"corpus-{SINGERS}x{per_singer}x{SONG_S:g}s", n_singers=SINGERS,
                                clips_per_singer=per_singer, duration_s=SONG_S)
    build(manifest, path, ["crepe-tiny"], clip_settings=ClipSettings(segment_s=None))
    return path


def transcription_rows(store, backbone: str, epochs: int, lr: float, context: float) -> list[dict]:
    """Fit frames, crf and crf+context on one store for the same epochs; time, speed and test scores."""
    nt = NotesTask()
    plan = nt.plan(store, backbone, score="test")
    F, Y, off, _ = nt.data(store, backbone, plan.train)
    Fv, Yv, offv, _ = nt.data(store, backbone, plan.select)
    Ft, Yt, offt, _ = nt.data(store, backbone, plan.score)
    fr = store.frame_rate(backbone)
    n_train = int(sum(F.n_frames(i) for i in range(len(F))))
    n_test = int(sum(Ft.n_frames(i) for i in range(len(Ft))))
    kw = dict(epochs=epochs, lr=lr, patience=epochs)                  # no early stop: equal work per fit
    FrameClassifierHead(epochs=1, lr=lr).fit(F, Y, frame_rate=fr, offsets=off, eval_set=(Fv, Yv, offv))  # warm-up
    heads = {"frames": FrameClassifierHead(**kw), "crf": CRFHead(**kw),
             f"crf+ctx{round(context * 1000)}ms": CRFHead(context=context, **kw)}
    rows = []
    for name, head in heads.items():
        _, fit_s = timed(lambda: head.fit(F, Y, frame_rate=fr, offsets=off, eval_set=(Fv, Yv, offv)))
        est, dec_s = timed(lambda: head.predict(Ft, offsets=offt))
        pairs = {i: (*notes_to_arrays(r), *notes_to_arrays(e)) for i, (r, e) in enumerate(zip(Yt, est))}
        mean = metrics.transcription_report(pairs)["mean"]
        val_s = sum(h["val_s"] for h in head.history_)
        rows.append({"head": name, "fit_s": fit_s, "epochs": len(head.history_), "best_epoch": head.best_epoch_,
                     "val_share": val_s / sum(h["val_s"] + h["train_s"] for h in head.history_),
                     "train_fps": n_train * len(head.history_) / fit_s, "decode_fps": n_test / dec_s,
                     "COnPOff": mean["COnPOff"]["f1"], "COnP": mean["COnP"]["f1"], "COn": mean["COn"]["f1"]})
    base = rows[0]["fit_s"]
    for r in rows:
        r["vs_frames"] = r["fit_s"] / base
    return rows, {"train_songs": len(F), "train_frames": n_train, "test_songs": len(Ft), "test_frames": n_test,
                  "frame_rate": fr, "scored_split": plan.score_split, "selection_split": plan.select_split}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heads_fit", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--store", help="store (default: the demo store, or the --corpus-minutes store)")
    p.add_argument("--corpus-minutes", type=float, default=0.0,
                   help="build/reuse a synthetic corpus of this many minutes of whole 20 s songs (0: demo store)")
    p.add_argument("--backbone", default="crepe-tiny", help="backbone in the store")
    p.add_argument("--label", default="singer", help="clip label for the clip heads")
    p.add_argument("--epochs", type=int, default=60, help="epochs of every torch fit (no early stop: equal work)")
    p.add_argument("--lr", type=float, default=1e-2, help="one learning rate (no sweep) so times compare")
    p.add_argument("--context", type=float, default=0.15, help="seconds of temporal context of the third CRF")
    p.add_argument("--skip-clip-heads", action="store_true", help="only the transcription heads")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.corpus_minutes < 0 or args.epochs < 1 or args.context <= 0:
        p.error("--corpus-minutes must be >= 0, --epochs >= 1 and --context > 0")
    path = args.store or (ensure_corpus_store(args.corpus_minutes) if args.corpus_minutes else ensure_demo_store())
    store = open_store(path)
    load_before = os.getloadavg()
    result = {"store": str(path), "backbone": args.backbone, "epochs": args.epochs, "lr": args.lr,
              "cpu_count": os.cpu_count()}
    if not args.skip_clip_heads:
        result.update(clip_heads(store, args))
    rows, info = transcription_rows(store, args.backbone, args.epochs, args.lr, args.context)
    result.update(transcription=rows, transcription_data=info, load_average=[load_before, os.getloadavg()])
    print(f"\ntranscription on {info['train_songs']} training clips ({info['train_frames']} frames at "
          f"{info['frame_rate']:g} Hz), scored on {info['test_songs']} {info['scored_split']} clips, epoch chosen "
          f"on {info['selection_split']}; {args.epochs} epochs at lr {args.lr:g}:")
    print(metrics.format_table(rows, ["head", "fit_s", "vs_frames", "train_fps", "decode_fps", "val_share", "best_epoch",
                                      "COnPOff", "COnP", "COn"]))
    print(f"crf / frames fit time: {rows[1]['vs_frames']:.2f}x (same epochs, same store, this run); "
          f"load average before/after: {load_before[0]:.1f}/{os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def clip_heads(store, args) -> dict:
    """Clip heads on pooled features and the layer sweep (one pass vs separate fits)."""
    task = make_task(args.label)
    plan = task.plan(store, args.backbone, score="test")
    X, y, _ = task.data(store, args.backbone, plan.train)
    Xv, yv, _ = task.data(store, args.backbone, plan.select)
    Xt, yt, _ = task.data(store, args.backbone, plan.score)
    torch_kw = dict(epochs=args.epochs, lr=args.lr, patience=args.epochs)  # no early stop: equal work per fit
    rows = []
    LinearHead(epochs=2).fit(X, y, eval_set=(Xv, yv))  # warm-up: torch's first optimiser/kernels are slow
    heads = {"linear": LinearHead(**torch_kw), "mlp": MLPHead(**torch_kw), "logreg": LogRegHead(),
             "lgbm": LGBMHead()}
    for name, head in heads.items():
        _, s = timed(lambda: head.fit(X, y, eval_set=(Xv, yv)))
        rows.append({"head": name, "task": args.label, "fit_s": s, "test accuracy": head.score(Xt, yt)})
    L = X.shape[1]
    sweep, sweep_s = timed(lambda: LinearHead(layers="each", **torch_kw).fit(X, y, eval_set=(Xv, yv)))
    singles_s = 0.0
    single_scores = []
    for layer in range(L):
        h, s = timed(lambda: LinearHead(layers=[layer], **torch_kw).fit(X, y, eval_set=(Xv, yv)))
        singles_s += s
        single_scores.append(h.score(Xv, yv))
    print(f"clip heads ({args.label}; scored on {plan.score_split}, chosen on {plan.select_split}):")
    print(metrics.format_table(rows, ["head", "task", "fit_s", "test accuracy"]))
    ls = {"layers": L, "one_pass_s": sweep_s, "separate_fits_s": singles_s, "speedup": singles_s / sweep_s,
          "curve_one_pass": [float(v) for v in sweep.layer_scores_], "curve_separate": [float(v) for v in single_scores]}
    print(f"\nlayer sweep over {L} layers: one pass {ls['one_pass_s']:.2f} s vs {L} separate fits "
          f"{ls['separate_fits_s']:.2f} s -> {ls['speedup']:.1f}x")
    print("valid accuracy per layer (one pass):", np.round(ls["curve_one_pass"], 3).tolist())
    print("valid accuracy per layer (separate):", np.round(ls["curve_separate"], 3).tolist())
    return {"clip_heads": rows, "n_train": int(len(X)), "layer_sweep": ls}


if __name__ == "__main__":
    raise SystemExit(main())
