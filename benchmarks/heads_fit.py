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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.cli import HelpFormatter, parse_spec
from featurestore.options import SpecError, add_config_options, add_options, option
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


@dataclass(frozen=True)
class HeadsFitSpec:
    """What one run fits (fields = the command's options, ``--config`` keys and keywords): every head
    for ``epochs`` epochs at one ``lr``, on ``store`` (None: the demo store, or with ``corpus_minutes`` > 0
    the synthetic corpus store of that many minutes)."""

    store: str | None = option(None, "store (default: the demo store, or the --corpus-minutes store)")
    corpus_minutes: float = option(0.0, "build/reuse a synthetic corpus of this many minutes of whole 20 s songs "
                                        "(0: demo store)")
    backbone: str = option("crepe-tiny", "backbone in the store")
    label: str = option("singer", "clip label for the clip heads")
    epochs: int = option(60, "epochs of every torch fit (no early stop: equal work)")
    lr: float = option(1e-2, "one learning rate (no sweep) so times compare")
    context: float = option(0.15, "seconds of temporal context of the third CRF")
    skip_clip_heads: bool = option(False, "only the transcription heads")
    json: str | None = option(None, "write the results here", identity=False)

    def __post_init__(self):
        if self.corpus_minutes < 0:
            raise SpecError("corpus_minutes", f"must be >= 0, got {self.corpus_minutes}")
        if self.epochs < 1:
            raise SpecError("epochs", f"must be >= 1, got {self.epochs}")
        if not self.context > 0:
            raise SpecError("context", f"must be > 0 seconds, got {self.context}")


def parse_args(argv=None) -> HeadsFitSpec:
    """Command-line options (see ``--help``) -> the spec; ``--print-config`` prints it and exits."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.heads_fit", description=__doc__,
                                formatter_class=HelpFormatter)
    add_options(p, HeadsFitSpec)
    add_config_options(p)
    return parse_spec(p, HeadsFitSpec, argv)


def run_heads_fit(spec: HeadsFitSpec) -> dict:
    """Fit and time every head on the spec's store -> the results dict (what ``--json`` writes;
    :func:`format_report` prints it). The store is built first when it is the demo or corpus store
    and missing."""
    if spec.store:
        path = spec.store
    else:
        path = ensure_corpus_store(spec.corpus_minutes) if spec.corpus_minutes else ensure_demo_store()
    store = open_store(path)
    load_before = os.getloadavg()
    result = {"store": str(path), "backbone": spec.backbone, "epochs": spec.epochs, "lr": spec.lr,
              "cpu_count": os.cpu_count()}
    if not spec.skip_clip_heads:
        result.update(clip_heads(store, spec.backbone, spec.label, spec.epochs, spec.lr))
    rows, info = transcription_rows(store, spec.backbone, spec.epochs, spec.lr, spec.context)
    result.update(transcription=rows, transcription_data=info, load_average=[load_before, os.getloadavg()])
    return result


def format_report(r: dict) -> str:
    """The printed report of :func:`run_heads_fit`'s results: clip heads and layer sweep (when run),
    then the transcription heads."""
    lines = []
    if "clip_heads" in r:
        ls, split = r["layer_sweep"], r["clip_splits"]
        lines += [f"clip heads ({split['task']}; scored on {split['scored']}, chosen on {split['chosen']}):",
                  metrics.format_table(r["clip_heads"], ["head", "task", "fit_s", "test accuracy"]),
                  f"\nlayer sweep over {ls['layers']} layers: one pass {ls['one_pass_s']:.2f} s vs {ls['layers']} "
                  f"separate fits {ls['separate_fits_s']:.2f} s -> {ls['speedup']:.1f}x",
                  f"valid accuracy per layer (one pass): {np.round(ls['curve_one_pass'], 3).tolist()}",
                  f"valid accuracy per layer (separate): {np.round(ls['curve_separate'], 3).tolist()}"]
    info, rows = r["transcription_data"], r["transcription"]
    lines += [f"\ntranscription on {info['train_songs']} training clips ({info['train_frames']} frames at "
              f"{info['frame_rate']:g} Hz), scored on {info['test_songs']} {info['scored_split']} clips, epoch "
              f"chosen on {info['selection_split']}; {r['epochs']} epochs at lr {r['lr']:g}:",
              metrics.format_table(rows, ["head", "fit_s", "vs_frames", "train_fps", "decode_fps", "val_share",
                                          "best_epoch", "COnPOff", "COnP", "COn"]),
              f"crf / frames fit time: {rows[1]['vs_frames']:.2f}x (same epochs, same store, this run); "
              f"load average before/after: {r['load_average'][0][0]:.1f}/{r['load_average'][1][0]:.1f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the benchmark, print the report, write ``--json`` if asked."""
    spec = parse_args(argv)
    result = run_heads_fit(spec)
    print(format_report(result))
    if spec.json:
        with open(spec.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def clip_heads(store, backbone: str, label: str, epochs: int, lr: float) -> dict:
    """Clip heads on pooled features of ``backbone`` for the clip label ``label`` (every torch fit
    ``epochs`` epochs at ``lr``) and the layer sweep (one pass vs separate fits) -> {clip_heads: rows,
    clip_splits, n_train, layer_sweep}."""
    task = make_task(label)
    plan = task.plan(store, backbone, score="test")
    X, y, _ = task.data(store, backbone, plan.train)
    Xv, yv, _ = task.data(store, backbone, plan.select)
    Xt, yt, _ = task.data(store, backbone, plan.score)
    torch_kw = dict(epochs=epochs, lr=lr, patience=epochs)  # no early stop: equal work per fit
    rows = []
    LinearHead(epochs=2).fit(X, y, eval_set=(Xv, yv))  # warm-up: torch's first optimiser/kernels are slow
    heads = {"linear": LinearHead(**torch_kw), "mlp": MLPHead(**torch_kw), "logreg": LogRegHead(),
             "lgbm": LGBMHead()}
    for name, head in heads.items():
        _, s = timed(lambda: head.fit(X, y, eval_set=(Xv, yv)))
        rows.append({"head": name, "task": label, "fit_s": s, "test accuracy": head.score(Xt, yt)})
    L = X.shape[1]
    sweep, sweep_s = timed(lambda: LinearHead(layers="each", **torch_kw).fit(X, y, eval_set=(Xv, yv)))
    singles_s = 0.0
    single_scores = []
    for layer in range(L):
        h, s = timed(lambda: LinearHead(layers=[layer], **torch_kw).fit(X, y, eval_set=(Xv, yv)))
        singles_s += s
        single_scores.append(h.score(Xv, yv))
    ls = {"layers": L, "one_pass_s": sweep_s, "separate_fits_s": singles_s, "speedup": singles_s / sweep_s,
          "curve_one_pass": [float(v) for v in sweep.layer_scores_],
          "curve_separate": [float(v) for v in single_scores]}
    return {"clip_heads": rows, "clip_splits": {"task": label, "scored": plan.score_split, "chosen": plan.select_split},
            "n_train": int(len(X)), "layer_sweep": ls}


if __name__ == "__main__":
    raise SystemExit(main())
