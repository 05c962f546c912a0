"""``python -m heads.reextract --run DIR``: write a fine-tuned frontend into the store as a new backbone.

    python -m heads.finetune --backbone crepe --head linear          # -> runs/crepe-tiny@sid-ft-linear
    python -m heads.reextract --run runs/crepe-tiny@sid-ft-linear    # -> backbone crepe-tiny@sid-ft
    python -m heads.fit --backbone crepe-tiny@sid-ft --head linear   # a probe on the fine-tuned frontend

The run's ``frontend/`` folder (LoRA already merged) is loaded the way ``featurestore.build
--model-path`` loads weights, and extracted over the store's clip table with the base backbone's
extraction settings (dtype, windows, context margins, chunking), so the new backbone's frames line
up with the base's frame for frame. Its provenance (``frontend.provenance`` in the backbone's
attributes) points at the run. An interrupted re-extraction resumes like any build.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from featurestore import open_store
from featurestore.build import DTYPES, ExtractSettings, extract_backbone
from featurestore.cli import HelpFormatter
from featurestore.frontends import load_frontend
from featurestore.locking import StoreLock
from featurestore.names import check_backbone_name
from featurestore.writer import open_root

#: ExtractSettings fields read from the base backbone's stored identity (a base built with --frames none or
#: --layers gives the fine-tuned backbone the same format).
_SETTINGS = ("dtype", "window_s", "context_s", "chunk_frames", "shard_frames", "target_unit_frames", "frames", "layers")


def base_settings(store, base: str | None, dtype: str | None) -> ExtractSettings:
    """The base backbone's extraction settings (defaults when it is not in the store), ``dtype`` overriding."""
    ident = {}
    if base is not None and base in store.backbones:
        ident = dict(store.group(base).attrs.get("identity", {}))
    kw = {k: ident[k] for k in _SETTINGS if k in ident}
    if "context_s" not in kw and ident:
        kw["context_s"] = 0.0  # stored without margins (frame-local frontends record none)
    if dtype:
        kw["dtype"] = dtype
    return ExtractSettings(**kw)


@dataclass(frozen=True)
class ReextractRecord:
    """What :func:`reextract_run` wrote: ``backbone`` (its name in the store), ``store`` (the store's
    path), ``units`` / ``units_done`` (extraction units planned / written), ``frames`` (frames of all
    clips), ``layers`` x ``dim`` (stored layers, features per layer), ``complete`` (every unit written)."""

    backbone: str
    store: str
    units: int
    units_done: int
    frames: int
    layers: int
    dim: int
    complete: bool


def reextract_run(run: Path, store=None, device: str = "cpu", overwrite: bool = False, progress: bool = True, *,
                  name: str | None = None, dtype: str | None = None, num_workers: int = 2,
                  trust_remote_code: bool = False) -> ReextractRecord:
    """Extract ``run/frontend`` into the store (``store``: a path or an open FeatureStore; None: the
    store the run was trained on) as ``name`` (default: the run's backbone name), with the base
    backbone's extraction settings (``dtype`` overriding its storage dtype). The folder loads into
    transformers' own classes (a fine-tuned MERT is saved as HuBERT); ``trust_remote_code`` is
    needed only for a run fine-tuned with the model's own code. FileNotFoundError for a run folder
    without a finished fine-tune; ValueError naming ``name`` for a name that cannot be a backbone."""
    run = Path(run)
    if name is not None:
        check_backbone_name(name, "name")
    args_file, metrics_file = run / "finetune_args.json", run / "metrics.json"
    if not metrics_file.is_file() or not (run / "frontend").is_dir():
        raise FileNotFoundError(f"{run} holds no finished fine-tune (metrics.json and frontend/ are written when "
                                "training ends): run heads.finetune first, or resume it")
    m, a = json.loads(metrics_file.read_text()), json.loads(args_file.read_text())
    store_path = m["store"] if store is None else str(getattr(store, "path", store))
    opened = open_store(store_path)
    name = name or m["backbone"]
    fe = load_frontend(a["backbone"], path=run / "frontend", device=device, trust_remote_code=trust_remote_code)
    fe.name = name
    ext = base_settings(opened, m.get("base_backbone"), dtype)
    root = open_root(store_path)
    s = extract_backbone(root, fe, ext, overwrite=overwrite, device=device, num_workers=num_workers,
                         progress=progress, lock=StoreLock(store_path))
    return ReextractRecord(backbone=name, store=str(store_path), units=int(s["units"]), units_done=int(s["units_done"]),
                           frames=int(s["frames"]), layers=int(s["layers"]), dim=int(s["dim"]),
                           complete=bool(s["complete"]))


def format_reextract(record: ReextractRecord) -> str:
    """The line ``python -m heads.reextract`` prints for a record."""
    s = record
    return (f"backbone {s.backbone} in {s.store}: {s.units_done}/{s.units} units, {s.frames} frames "
            f"x {s.layers} layers x {s.dim} ({'complete' if s.complete else 'incomplete'})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m heads.reextract",
                                description="Write a fine-tuned frontend (a heads.finetune run folder) into the store "
                                            "as a new backbone, with the base backbone's extraction settings and "
                                            "provenance pointing at the run.", formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="run folder written by heads.finetune")
    p.add_argument("--store", help="store to write into (default: the store the run was trained on)")
    p.add_argument("--name", help="backbone name in the store (default: the run's, e.g. crepe-tiny@sid-ft)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="storage dtype (default: the base backbone's)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--num-workers", type=int, default=2, help="audio decoding worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace a backbone of that name extracted differently")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the run's frontend folder run Python code of its own (only for a run fine-tuned with "
                        "--trust-remote-code, and only if you trust it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from featurestore.build import SettingsMismatch

    args = parse_args(argv)
    try:
        s = reextract_run(Path(args.run), args.store, device=args.device, overwrite=args.overwrite,
                          progress=not args.no_progress, name=args.name, dtype=args.dtype,
                          num_workers=args.num_workers, trust_remote_code=args.trust_remote_code)
    except (FileNotFoundError, ValueError, KeyError, SettingsMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_reextract(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
