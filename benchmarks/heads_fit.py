"""``python -m benchmarks.heads_fit``: time to fit each head on the demo store, and the layer sweep
(one pass, L probes) against L separate single-layer fits, measured in the same run.

Prints a table and optionally writes JSON. Uses the demo store (built if missing) unless --store.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from featurestore.cli import HelpFormatter
from featurestore import open_store
from heads import metrics
from heads.clip_heads import LGBMHead, LinearHead, LogRegHead, MLPHead
from heads.fit import ensure_demo_store
from heads.frame_heads import CRFHead, FrameClassifierHead
from heads.tasks import NotesTask, make_task


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heads_fit", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--store", help="store (default: the demo store)")
    p.add_argument("--backbone", default="crepe-tiny", help="backbone in the store")
    p.add_argument("--label", default="singer", help="clip label for the clip heads")
    p.add_argument("--epochs", type=int, default=60, help="epochs of every torch fit (no early stop: equal work)")
    p.add_argument("--lr", type=float, default=1e-2, help="one learning rate (no sweep) so times compare")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    store = open_store(args.store or ensure_demo_store())
    task = make_task(args.label)
    plan = task.plan(store, args.backbone, score="test")
    X, y, _ = task.data(store, args.backbone, plan.train)
    Xv, yv, _ = task.data(store, args.backbone, plan.select)
    Xt, yt, _ = task.data(store, args.backbone, plan.score)
    torch_kw = dict(epochs=args.epochs, lr=args.lr, patience=args.epochs)  # no early stop: equal work per fit
    rows = []
    LinearHead(epochs=2).fit(X, y, eval_set=(Xv, yv))  # warm-up: torch's first optimiser/kernels are slow
    clip_heads = {"linear": LinearHead(**torch_kw), "mlp": MLPHead(**torch_kw), "logreg": LogRegHead(),
                  "lgbm": LGBMHead()}
    for name, head in clip_heads.items():
        _, s = timed(lambda: head.fit(X, y, eval_set=(Xv, yv)))
        rows.append({"head": name, "task": args.label, "fit_s": s, "test": head.score(Xt, yt)})
    nt = NotesTask()
    nplan = nt.plan(store, args.backbone, score="test")
    F, Y, off, _ = nt.data(store, args.backbone, nplan.train)
    Fv, Yv, offv, _ = nt.data(store, args.backbone, nplan.select)
    Ft, Yt, offt, _ = nt.data(store, args.backbone, nplan.score)
    fr = store.frame_rate(args.backbone)
    for name, head in {"frames": FrameClassifierHead(**torch_kw), "crf": CRFHead(**torch_kw)}.items():
        _, s = timed(lambda: head.fit(F, Y, frame_rate=fr, offsets=off, eval_set=(Fv, Yv, offv)))
        rows.append({"head": name, "task": "transcription (COnP F1)", "fit_s": s,
                     "test": head.score(Ft, Yt, offsets=offt)})
    L = X.shape[1]
    sweep, sweep_s = timed(lambda: LinearHead(layers="each", **torch_kw).fit(X, y, eval_set=(Xv, yv)))
    singles_s = 0.0
    single_scores = []
    for layer in range(L):
        h, s = timed(lambda: LinearHead(layers=[layer], **torch_kw).fit(X, y, eval_set=(Xv, yv)))
        singles_s += s
        single_scores.append(h.score(Xv, yv))
    result = {"backbone": args.backbone, "n_train": int(len(X)), "epochs": args.epochs, "heads": rows,
              "layer_sweep": {"layers": L, "one_pass_s": sweep_s, "separate_fits_s": singles_s,
                              "speedup": singles_s / sweep_s, "curve_one_pass": [float(v) for v in sweep.layer_scores_],
                              "curve_separate": [float(v) for v in single_scores]}}
    print(metrics.format_table(rows, ["head", "task", "fit_s", "test"]))
    ls = result["layer_sweep"]
    print(f"\nlayer sweep over {L} layers: one pass {ls['one_pass_s']:.2f} s vs {L} separate fits "
          f"{ls['separate_fits_s']:.2f} s -> {ls['speedup']:.1f}x")
    print("valid accuracy per layer (one pass):", np.round(ls["curve_one_pass"], 3).tolist())
    print("valid accuracy per layer (separate):", np.round(ls["curve_separate"], 3).tolist())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
