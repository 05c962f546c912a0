"""``python -m featurestore.build``: extract every hidden layer of a frontend into a Zarr store.

With no arguments it builds the built-in demo store (a synthetic sung-melody corpus, CREPE tiny)
and prints a summary. Run it again with another ``--backbone`` to add that backbone to the same
store; run it again after a crash to finish the job.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from featurestore.cli import HelpFormatter
import featurestore
from featurestore import layout
from featurestore.clips import ClipSettings, clip_samples, plan_clips
from featurestore import distributed
from featurestore.distributed import Ranks
from featurestore.extract import UnitAudio, WindowGeometry, file_stat, run_unit, window_plan
from featurestore.frontends import Frontend, load_frontend
from featurestore.hf_loading import ATTENTION_KINDS
from featurestore.location import Location, is_url, store_location
from featurestore.locking import KINDS as LOCK_KINDS, LockTimeout, StoreLock
from featurestore.metadata_check import clear_damaged, damaged_metadata
from featurestore.names import check_backbone_name
from featurestore import fingerprint as fpr
from featurestore.manifest import read_inputs
from featurestore.registry import ALIASES, DEFAULT_BACKBONE, REGISTRY, resolve
from featurestore.verify import clip_table_problems, plan_problems
from featurestore.writer import (BackgroundWriter, BackbonePlan, create_backbone, finish_split_clip, open_root,
                                  write_clip_table)

#: ``--dtype``: how frames are stored (int8: 8-bit codes per chunk, layer and channel, featurestore.quantize)
DTYPES = {"float16": "float16", "float32": "float32", "int8": "int8"}


class SettingsMismatch(RuntimeError):
    """The store was built with other settings; pass ``overwrite=True`` to rebuild that part."""


@dataclass
class ExtractSettings:
    """Backbone-level settings. window_s: longest input (seconds) the model sees in one pass, context
    margins included; context_s: audio (seconds) a stored frame of a windowed clip sees beyond its
    own span on each side, computed in overlapping margins and dropped (not for frame-local
    frontends such as CREPE; see :mod:`featurestore.extract`); batch_s: padded audio seconds per
    batch; chunk_frames/shard_frames: Zarr chunking of frames; target_unit_frames: frames per unit
    of work (a unit is the grain of resume and of parallel writers, and bounds the frames and audio
    one extraction step holds: a longer clip is split over several units, see
    :mod:`featurestore.layout`); frames: ``all`` or ``none`` (pooled rows only); layers: the model's
    hidden-state indices to keep (None: all), in increasing order."""

    dtype: str = "float16"
    window_s: float = 30.0
    context_s: float = 5.0
    batch_s: float | None = None  # None: 80 s on CUDA, 10 s on CPU (large CPU batches ran slower)
    chunk_frames: int = 256
    shard_frames: int | None = None
    target_unit_frames: int = 8192
    frames: str = layout.FRAMES_ALL
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype (--dtype) must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.frames not in layout.FRAMES_MODES:
            raise ValueError(f"frames (--frames) must be one of {', '.join(layout.FRAMES_MODES)}, got {self.frames!r}")
        if self.layers is not None:
            self.layers = tuple(int(v) for v in self.layers)
            if not self.layers or list(self.layers) != sorted(set(self.layers)) or min(self.layers) < 0:
                raise ValueError(f"layers (--layers) must be distinct layer indices >= 0 in increasing order, "
                                 f"got {list(self.layers)}")
        if self.dtype == "int8" and self.frames == layout.FRAMES_NONE:
            raise ValueError("--dtype int8 stores 8-bit frames; --frames none stores none: use --dtype float16 "
                             "(the pooled rows' dtype) with --frames none")

    def identity(self, frame_local: bool = False) -> dict:
        """What must match for an existing backbone to be resumed instead of rebuilt.

        ``context_s`` is part of it only when margins are used (> 0 and not ``frame_local``): stores
        built before margins existed have no ``context_s`` and were built without margins, so they
        match a build without margins (any CREPE or log-mel build, or ``context_s=0``) and a
        transformers build with margins reports ``context_s`` as changed."""
        out = {"dtype": self.dtype, "window_s": self.window_s, "chunk_frames": self.chunk_frames,
               "shard_frames": self.shard_frames, "target_unit_frames": self.target_unit_frames}
        if self.context_s and not frame_local:
            out["context_s"] = self.context_s
        if self.frames != layout.FRAMES_ALL:  # (stores built before --frames have all frames)
            out["frames"] = self.frames
        if self.layers is not None:  # (and every layer)
            out["layers"] = list(self.layers)
        return out


@dataclass
class BuildReport:
    store: str
    clips: int = 0
    skipped: list = field(default_factory=list)
    backbones: dict = field(default_factory=dict)
    seconds: float = 0.0


def resolve_batch_seconds(batch_s: float | None, device) -> float:
    """Padded audio seconds per batch: as given, else 80 s on CUDA and 10 s on CPU (on 2 CPU cores
    CREPE tiny ran about 15 % slower in 80 s batches than in 5-10 s ones: the intermediates of a
    large batch no longer fit in cache)."""
    if batch_s is not None:
        return float(batch_s)
    return 80.0 if torch.device(device).type == "cuda" else 10.0


def _versions() -> dict:
    out = {"featurestore": featurestore.__version__}
    for pkg in ("torch", "transformers", "torchcrepe", "zarr", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _norm(d: dict) -> dict:
    return json.loads(json.dumps(d))


def _ensure_clip_table(root, input_path, settings: ClipSettings, *, overwrite: bool, num_workers: int,
                       progress: bool, vocals_cache: Path, device: str = "cpu",
                       fingerprint: str | None = None, lock: StoreLock | None = None) -> list[dict]:
    """Plan the clip table once per store. Returns the skip report (of this or the earlier planning).
    ``fingerprint``: how input files are compared with the store's (``stat`` or ``content``, see
    :mod:`featurestore.fingerprint`; None: the store's mode, ``stat`` for a new store).

    A table that is done is used without locking; otherwise planning happens under ``lock`` (the
    store's, :mod:`featurestore.locking`), after checking again whether another process planned it
    while this one waited. A table marked complete but damaged (a column missing, see
    :func:`featurestore.verify.clip_table_problems`) is planned again in place."""
    rows, row_skips = read_inputs(input_path)
    inputs = fpr.input_table(rows, fpr.resolve_mode(root, fingerprint))

    def wanted(root) -> dict:
        return {"clip_settings": settings.as_dict(), "input": str(Path(input_path).resolve()),
                fpr.DIGEST_KEY: fpr.comparable_digest(root, rows, inputs)}

    if _clip_table_state(root, wanted(root))[0] == "done":  # the usual case: no lock needed
        return list(root.attrs.get("skipped", []))
    with (lock or _default_lock(root)).hold("planning the clip table"):
        root = _reopen(root)  # another process may have planned it while this one waited
        if fpr.resolve_mode(root, fingerprint) != inputs.mode:
            inputs = fpr.input_table(rows, fpr.resolve_mode(root, fingerprint))
        want = wanted(root)
        state, detail = _clip_table_state(root, want)
        if state == "done":
            return list(root.attrs.get("skipped", []))
        if state == "damaged":
            print(f"note: re-planning the clip table of {_store_dir(root)}, which is damaged: {'; '.join(detail)}",
                  file=sys.stderr)
        return _plan_clip_table(root, rows, row_skips, inputs, want, settings, state == "changed",
                                overwrite=overwrite, num_workers=num_workers, progress=progress,
                                vocals_cache=vocals_cache, device=device)


def _clip_table_state(root, want: dict) -> tuple[str, list[str]]:
    """('done', []), ('changed', keys of ``want`` that differ: complete, but planned from other settings
    or input), ('damaged', problems: marked complete, but not complete in substance) or ('todo', [])."""
    if not (layout.CLIPS in root and root[layout.CLIPS].attrs.get("complete", False)):
        return "todo", []
    have = {k: root.attrs.get(k) for k in want}
    if _norm(have) != _norm(want):
        return "changed", [k for k in want if _norm(have).get(k) != _norm(want).get(k)]
    problems = clip_table_problems(root)
    return ("damaged", problems) if problems else ("done", [])


def _plan_clip_table(root, rows, row_skips, inputs, want: dict, settings: ClipSettings, changed: bool, *,
                     overwrite: bool, num_workers: int, progress: bool, vocals_cache: Path, device: str) -> list[dict]:
    """Plan and write the clip table (the caller holds the store's lock). ``changed``: the store holds a
    complete table planned from other settings or input, replaced only with ``overwrite``."""
    have = {k: root.attrs.get(k) for k in want}
    if changed:
        if not overwrite:
            diff = [k for k in want if _norm(have).get(k) != _norm(want).get(k)]
            why = [f"it was planned with other {k} (stored: {json.dumps(have[k])})" for k in diff
                   if k != fpr.DIGEST_KEY]
            why += [fpr.describe_change(root, inputs)] if fpr.DIGEST_KEY in diff else []
            raise SettingsMismatch(
                f"store {root.store} does not match this build: {'; '.join(why)}; pass --overwrite to re-plan the "
                "clips (this deletes every backbone already in the store)")
        del root[layout.BACKBONES]  # every backbone was laid out on the old clip table
    clips, file_skips = plan_clips(rows, settings, vocals_cache=vocals_cache, num_workers=num_workers,
                                   progress=progress, device=device)
    skips = [s.as_dict() for s in row_skips] + file_skips
    root.attrs.update({"format": layout.FORMAT, "versions": _versions(), **want, fpr.DIGEST_KEY: inputs.digest,
                       fpr.MODE_KEY: inputs.mode, "skipped": skips})
    fpr.write_input_table(root, inputs)
    write_clip_table(root, clips)
    return skips


def _layout(root, fe: Frontend, ext: ExtractSettings) -> tuple[BackbonePlan, dict]:
    """The backbone's layout on the store's clip table, and the attributes its plan is stored with."""
    clips = root[layout.CLIPS]
    a, b = clip_samples(clips["start_s"][:], clips["end_s"][:], fe.sample_rate)
    nf = np.array([fe.n_frames(n) for n in (b - a)], dtype=np.int64)
    align = ext.shard_frames or ext.chunk_frames
    per_unit, piece = layout.unit_plan(nf, ext.target_unit_frames, align)
    offsets, total = layout.layout_frames(nf, per_unit, align)
    plan = BackbonePlan(offsets, per_unit, align, total, piece)
    ids = clips["id"][:]
    short = [{"where": str(ids[i]), "reason": "too_short",
              "message": f"clip {ids[i]}: {int(b[i] - a[i])} samples give no {fe.name} frame "
                         f"(receptive field {fe.receptive} samples)", "path": ""} for i in np.flatnonzero(nf == 0)]
    attrs = {"frontend": fe.describe(), "versions": _versions(), "skipped": short,
             "dtype": ext.dtype, "n_clips": int(len(nf)), "n_frames": int(nf.sum()), "frames": ext.frames,
             "layers": list(ext.layers) if ext.layers is not None else list(range(fe.num_layers))}
    return plan, attrs


def _plan_state(root, path: str, identity: dict, plan: BackbonePlan) -> tuple[str, list]:
    """('ok', []), ('absent', []: no group, or one never marked planned), ('changed', [stored identity])
    or ('damaged', problems: planned with these settings, but arrays, attributes or offsets are not
    those of ``plan``; see :func:`featurestore.verify.plan_problems`)."""
    if path not in root or not root[path].attrs.get("planned", False):
        return "absent", []
    g = root[path]
    stored = _norm(g.attrs.get("identity", {}))
    if stored != _norm(identity):
        return "changed", [stored]
    problems = plan_problems(g, plan, path)
    return ("damaged", problems) if problems else ("ok", [])


def _plan_backbone(root, fe: Frontend, ext: ExtractSettings, identity: dict, *, overwrite: bool,
                   lock: StoreLock | None = None):
    """Return the backbone group, planning it (offsets, empty arrays) unless a sound plan with these
    settings exists. Planning (and the deletion of an old or damaged plan) happens under ``lock``,
    after checking again whether another process planned it while this one waited."""
    path = layout.backbone_path(fe.name)
    plan, attrs = _layout(root, fe, ext)
    if _plan_state(root, path, _with_pieces(identity, plan), plan)[0] == "ok":  # the usual case: no lock needed
        return root[path]
    with (lock or _default_lock(root)).hold(f"planning backbone {fe.name}"):
        root = _reopen(root)
        plan, attrs = _layout(root, fe, ext)
        identity = _with_pieces(identity, plan)
        state, detail = _plan_state(root, path, identity, plan)
        if state == "ok":
            return root[path]
        if state == "changed" and not overwrite:
            stored = detail[0]
            diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != _norm(identity).get(k))
            raise SettingsMismatch(
                f"backbone {fe.name!r} is already in the store with other settings ({', '.join(diff)}: "
                f"stored {json.dumps({k: stored.get(k) for k in diff})}, now "
                f"{json.dumps({k: _norm(identity).get(k) for k in diff})}); pass --overwrite to rebuild it, "
                "or --name to store it under another name")
        if state == "damaged":
            print(f"note: re-planning backbone {fe.name!r} of {_store_dir(root)}, whose plan is damaged: "
                  f"{'; '.join(detail)}", file=sys.stderr)
        attrs = {**attrs, "identity": identity, "plan_id": uuid.uuid4().hex}
        return create_backbone(root, fe.name, plan, len(attrs["layers"]), fe.dim, dtype=ext.dtype,
                               chunk_frames=ext.chunk_frames, shard_frames=ext.shard_frames, attrs=attrs,
                               frames=ext.frames)


def _with_pieces(identity: dict, plan: BackbonePlan) -> dict:
    """The identity of a backbone whose layout splits long clips into pieces carries ``piece_frames``
    (and only then: a store without split clips, old or new, has the same identity as before pieces
    existed, while an old store that a build would now split reports ``piece_frames`` as changed)."""
    return {**identity, "piece_frames": plan.piece} if plan.piece else identity


def _mark_complete(root, name: str, plan_id, lock: StoreLock) -> bool:
    """Mark a backbone complete once every unit is done (under the lock; not when another process
    re-planned it meanwhile). Returns whether it is complete."""
    path = layout.backbone_path(name)
    g = root[path]
    if g.attrs.get("plan_id") != plan_id or not g["unit_done"][:].all():
        return False
    if g.attrs.get("complete", False):
        return True
    with lock.hold(f"marking backbone {name} complete"):
        root = _reopen(root)
        if path not in root:
            return False
        g = root[path]
        if g.attrs.get("plan_id") != plan_id or not g["unit_done"][:].all():
            return False
        if not g.attrs.get("complete", False):
            g.attrs["complete"] = True
    return True


def _store_dir(root) -> Path | str:
    """The folder (local path) or URL of an open store."""
    loc = store_location(root)
    return loc.url if loc.is_url else loc.path


def _array_address(root, *parts: str) -> str:
    """What ``zarr.open_array`` takes for an array of an open store: a local path or a URL."""
    loc = store_location(root)
    return "/".join([loc.url, *parts]) if loc.is_url else str(loc.path.joinpath(*parts))


def _reopen(root):
    """The store's root group read again from disk (Zarr groups keep the attributes they were opened with)."""
    return open_root(_store_dir(root))


def _default_lock(root) -> StoreLock:
    return StoreLock(_store_dir(root))


def _work_order(todo: list[int]) -> list[int]:
    """The order this process extracts its units in: ``todo`` rotated to start at a random unit.
    Builds of one store started together (no --shard) then work on different units and, as each
    skips the units the other has finished (:class:`featurestore.extract.UnitAudio` and the
    extraction loop re-read a unit's marker before decoding and before running it), split the work
    instead of both doing all of it. The result does not depend on the order."""
    if len(todo) < 2:
        return list(todo)
    k = int(np.random.default_rng().integers(len(todo)))
    return list(todo[k:]) + list(todo[:k])


def finish_split_clips(g, units: np.ndarray, offsets: np.ndarray) -> int:
    """Write the pooled rows of every split clip whose pieces are all done but whose rows are not
    written yet (a build killed between a clip's last piece marker and its pooled rows, or two builds
    finishing pieces of one clip at once). Returns how many clips it finished."""
    split = layout.split_units(units)
    if not split:
        return 0
    done = g["unit_done"][:]
    n = 0
    for clip, us in split.items():
        if done[us.start:us.stop].all() and np.isnan(g["pooled_mean"][clip]).all():
            n += finish_split_clip(g, clip, us, int(offsets[clip, 1] - offsets[clip, 0]))
    return n


def _audio_seconds(units: np.ndarray, offsets: np.ndarray, samples: np.ndarray, sr: int) -> float:
    """Audio seconds that ``units`` (rows of :func:`featurestore.layout.unit_table`) extract: each
    clip's length (``samples`` [N] at ``sr`` Hz) times the share of its frames the unit owns (all of
    them, except for a piece of a split clip)."""
    total = 0.0
    for lo, hi, start, end in units:
        own = np.minimum(offsets[lo:hi, 1], end) - np.maximum(offsets[lo:hi, 0], start)
        nf = np.maximum(offsets[lo:hi, 1] - offsets[lo:hi, 0], 1)
        total += float((own.clip(0) / nf * samples[lo:hi]).sum())
    return total / sr


def _one_thread(_worker_id: int) -> None:
    """Decoding workers resample with torch: one thread each, so they do not fight the model for cores."""
    torch.set_num_threads(1)


def _rank_units(ranks: Ranks, units: np.ndarray, offsets: np.ndarray, samples: np.ndarray, sr: int) -> np.ndarray:
    """The units (indices into ``units``, rows of :func:`featurestore.layout.unit_table`) that rank
    ``ranks.rank`` extracts: its share of all units, done or not, balanced by audio seconds, so that
    every rank and every rerun agree on it."""
    seconds = [_audio_seconds(units[u:u + 1], offsets, samples, sr) for u in range(len(units))]
    return distributed.assign_units(seconds, ranks.world_size)[ranks.rank]


def extract_backbone(root, fe: Frontend, ext: ExtractSettings, *, overwrite=False, device="cpu", num_workers=2,
                     shard: tuple[int, int] = (0, 1), progress=True, plan_only=False,
                     lock: StoreLock | None = None, ranks: Ranks | None = None) -> dict:
    """Plan (if needed) and extract every unit of one backbone that is not done yet (those with
    ``unit % shard[1] == shard[0]``). Returns a summary. ``lock``: the store's lock, taken to plan
    and to mark the backbone complete (None: the default lock of the store's folder).

    ``ranks``: this process's place in a multi-process build (:mod:`featurestore.distributed`): it
    extracts only its share of the units (:func:`featurestore.distributed.assign_units`, balanced by
    audio seconds). With a process group (torchrun), rank 0 plans while the others wait, and once
    every rank has finished rank 0 marks the backbone complete; without one (one rank's share run
    alone), the backbone must be planned already."""
    check_backbone_name(fe.name)  # one group of the store: backbones/<name>
    lock = lock or _default_lock(root)
    device = torch.device(device)
    window_k, context_k = window_plan(fe, ext.window_s, ext.context_s)  # checked before anything is planned
    if ext.layers is not None and max(ext.layers) >= fe.num_layers:
        raise ValueError(f"--layers {','.join(map(str, ext.layers))}: {fe.name} has hidden states "
                         f"0..{fe.num_layers - 1} ({fe.num_layers} layers)")
    identity = {**ext.identity(fe.frame_local), "weights_hash": fe.weights_hash(), "sample_rate": fe.sample_rate,
                "stride": fe.stride, "receptive": fe.receptive, "pad": fe.pad,
                "do_normalize": getattr(fe, "do_normalize", None)}
    path = layout.backbone_path(fe.name)
    alone = shard[1] > 1 or (ranks is not None and not ranks.group)
    if alone and not (path in root and root[path].attrs.get("planned", False)):
        raise RuntimeError(f"--shard/--rank need {fe.name!r} planned first: run the build once with --plan-only "
                           f"--backbone {fe.name}")

    def plan():
        return _plan_backbone(root, fe, ext, identity, overwrite=overwrite, lock=lock)

    if ranks is not None and ranks.group:
        ranks.barrier_then(plan, f"planning backbone {fe.name}")  # then every rank finds it planned
    g = plan()
    if plan_only:
        return {"planned": True}
    per_unit, align = int(g.attrs["clips_per_unit"]), int(g.attrs["align"])
    offsets = g["offsets"][:]
    units = layout.unit_table(offsets, per_unit, align, g.attrs.get("piece_frames"))
    split = layout.split_units(units)
    done = g["unit_done"][:]
    index, count = shard
    clips = root[layout.CLIPS]
    a, b = clip_samples(clips["start_s"][:], clips["end_s"][:], fe.sample_rate)
    mine = range(len(done)) if ranks is None else _rank_units(ranks, units, offsets, b - a, fe.sample_rate)
    todo = _work_order([int(u) for u in mine if not done[u] and u % count == index])
    rows = np.array([[u, *units[u]] for u in todo], dtype=np.int64).reshape(-1, 5)
    audio = clips["audio"][:]
    used = sorted({str(audio[c]) for u in todo for c in range(int(units[u, 0]), int(units[u, 1]))})
    stats = {p: s for p in used if (s := file_stat(p)) is not None}  # a file changing from here on is reported
    data = UnitAudio(rows, offsets, audio, a, b, fe.sample_rate, WindowGeometry.of(fe, window_k, context_k),
                     done_path=_array_address(root, path, "unit_done"), file_stats=stats)
    seconds = _audio_seconds(units[todo], offsets, b - a, fe.sample_rate)
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                                         prefetch_factor=2 if num_workers > 0 else None,
                                         persistent_workers=False, worker_init_fn=_one_thread)
    bar = tqdm(total=round(seconds, 1), unit="audio-s", desc=f"extract {fe.name}", disable=not progress,
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} audio-s "
                                              "[{elapsed}<{remaining}, {rate_fmt}]")
    fe.to(device).eval()
    t0 = time.perf_counter()
    writer = BackgroundWriter(g, depth=2)
    budget = int(resolve_batch_seconds(ext.batch_s, device) * fe.sample_rate)
    np_dtype = np.dtype(layout.stored_dtypes(ext.dtype)[1])  # of the pooled rows (and of float frames)
    keep = {"layers": None if ext.layers is None else list(ext.layers), "keep_frames": ext.frames == layout.FRAMES_ALL,
            "quant_chunk": ext.chunk_frames if ext.dtype == "int8" else 0}
    marks = g["unit_done"]
    skipped = 0
    bad_input = []  # files that vanished or changed since planning: their clips are stored as NaN
    try:
        for u, waves in loader:
            if waves is None or marks[u]:  # another build finished it meanwhile
                skipped += 1
                continue
            bad_input += [_vanished(fe.name, clips["id"][int(w.row)], str(audio[int(w.row)]), w.error)
                          for w in waves if getattr(w, "error", None)]
            lo = int(units[u, layout.CLIP_LO])
            res = run_unit(fe, u, units[u], waves, offsets, window_k=window_k, context_k=context_k,
                           budget_samples=budget, device=device, dtype=np_dtype, clip_units=split.get(lo),
                           on_batch=lambda s: bar.update(round(s, 3)), **keep)
            writer.put(res)
    finally:
        writer.close()
        bar.close()
        if bad_input:  # in the backbone's report (store.skipped, and the build's report)
            with lock.hold(f"recording bad input of backbone {fe.name}"):
                g = _reopen(root)[path]
                g.attrs["skipped"] = list(g.attrs.get("skipped", [])) + bad_input
    if ranks is not None and ranks.group:
        ranks.wait_all()  # every rank's units are written
    done = g["unit_done"][:]
    if ranks is None or ranks.leader or not ranks.group:
        if done.all() and not g.attrs.get("complete", False):
            finish_split_clips(g, units, offsets)
        complete = bool(done.all()) and _mark_complete(root, fe.name, g.attrs.get("plan_id"), lock)
    if ranks is not None and ranks.group:
        ranks.wait_all()  # rank 0 has marked it complete
        complete = bool(_reopen(root)[path].attrs.get("complete", False))
    rank = {"rank": f"{ranks.rank}/{ranks.world_size}"} if ranks is not None else {}
    return {**rank, "units": int(len(done)), "units_done": int(done.sum()), "complete": complete,
            "units_skipped": skipped,
            "frames": int((offsets[:, 1] - offsets[:, 0]).sum()), "frames_allocated": int(g.attrs["total_frames"]),
            "frames_stored": layout.frames_mode(g.attrs), "layers": len(layout.layer_ids(g.attrs)), "dim": fe.dim,
            "audio_seconds": seconds,
            "seconds": time.perf_counter() - t0}


def build(input_path, store_path, backbones=(DEFAULT_BACKBONE,), *, clip_settings: ClipSettings | None = None,
          extract: ExtractSettings | None = None, model_path=None, name=None, local_files_only=False,
          trust_remote_code: bool = False, attention: str | None = None, device=None, num_workers=2,
          overwrite=False, shard=(0, 1), vocals_cache=None,
          progress=True, plan_only=False, fingerprint=None, lock: str = "auto",
          lock_timeout: float | None = None, ranks: Ranks | None = None) -> BuildReport:
    """Library entry point of the CLI: plan the clips (once) and extract each backbone.

    ``lock``: auto | flock | lease, how the store is locked while its metadata is planned or changed
    (:mod:`featurestore.locking`; several builds of one store wait for each other there and extract
    side by side); ``lock_timeout``: seconds to wait for another build's lock before giving up with
    :class:`featurestore.locking.LockTimeout` (None: wait).

    ``fingerprint``: ``stat`` or ``content``, how input files are checked against those the clip
    table was planned from (None: the store's mode, ``stat`` for a new store).

    ``plan_only``: plan the clip table and the backbones' layouts, extract nothing (the step before
    several ``shard`` processes write one store).

    ``trust_remote_code``: let a transformers model's own Python code run (off by default: every
    registry entry, MERT included, loads into transformers' own classes); ``attention``: ``sdpa`` |
    ``eager`` | None (SDPA where transformers offers it).

    ``ranks``: this process's rank in a multi-process build (:mod:`featurestore.distributed`; from
    torchrun, with a process group: rank 0 plans the clip table while the others wait; without one:
    one rank's share run alone, on a planned store). ``device`` is then this rank's device."""
    t0 = time.perf_counter()
    if name is not None:
        check_backbone_name(name, "--name")  # before anything is written
    for bb in backbones:  # an unknown name or a malformed hear:MODULE, before anything is written
        resolve(bb)
    clip_settings = clip_settings or ClipSettings()
    extract = extract or ExtractSettings()
    check_layers_published(extract, backbones, model_path)  # before anything is written
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loc = Location(store_path)  # a local folder or an fsspec URL (featurestore.location)
    store_path = loc.url if loc.is_url else loc.path
    store_lock = StoreLock(store_path, kind=lock, timeout=lock_timeout)
    store_lock.check_paths()  # a lock file that is a link: refused before the store folder is created
    if loc.is_file("zarr.json") and damaged_metadata(loc):  # unreadable zarr.json files: recover before opening
        with store_lock.hold("clearing damaged metadata"):
            clear_damaged(loc, _built_names(backbones, name), overwrite=overwrite,
                          log=lambda m: print(m, file=sys.stderr))
    created = not loc.exists()
    root = open_root(store_path)
    if vocals_cache:
        vocals_cache = Path(vocals_cache)
    else:  # separated audio is a local cache: beside a local store, under the user's cache for a URL one
        vocals_cache = (default_demo_dir().parent / "vocals" / (loc.name + ".vocals") if loc.is_url
                        else loc.path.with_name(loc.name + ".vocals"))
    try:
        alone = shard[1] > 1 or (ranks is not None and not ranks.group)
        if alone and not (layout.CLIPS in root and root[layout.CLIPS].attrs.get("complete", False)):
            raise RuntimeError("--shard/--rank need a planned clip table: run the build once with --plan-only first")

        def plan():
            return _ensure_clip_table(root, input_path, clip_settings, overwrite=overwrite, num_workers=num_workers,
                                      progress=progress, vocals_cache=vocals_cache, device=device,
                                      fingerprint=fingerprint, lock=store_lock)

        if ranks is not None and ranks.group:
            ranks.barrier_then(plan, "planning the clip table")  # then every rank finds it planned
            root = open_root(store_path)  # attributes as rank 0 wrote them
        skips = plan()
    except Exception as e:
        if created and not isinstance(e, LockTimeout):
            _remove_empty_store(store_path, store_lock)
        raise
    report = BuildReport(str(store_path), clips=int(root[layout.CLIPS].attrs["n_clips"]), skipped=list(skips))
    if report.clips == 0:
        raise RuntimeError(f"no clip could be planned from {input_path}: " +
                           "; ".join(s["message"] for s in skips[:5]))
    for bb in backbones:
        fe = load_frontend(bb, path=model_path, local_files_only=local_files_only, device=device,
                           trust_remote_code=trust_remote_code, attention=attention)
        if name:
            fe.name = name
        summary = extract_backbone(root, fe, extract, overwrite=overwrite, device=device,
                                   num_workers=num_workers, shard=shard, progress=progress, plan_only=plan_only,
                                   lock=store_lock, ranks=ranks)
        g = root[layout.backbone_path(fe.name)]
        report.skipped += list(g.attrs.get("skipped", []))
        if not plan_only:
            report.backbones[fe.name] = summary
    report.seconds = time.perf_counter() - t0
    return report


def _vanished(backbone: str, clip_id, path: str, error: str) -> dict:
    """The report line of a clip whose file went bad during extraction (:class:`featurestore.extract.UnitAudio`)."""
    reason = "vanished" if error.startswith("vanished") else "changed" if error.startswith("changed") else "unreadable"
    return {"where": str(clip_id), "reason": reason, "path": path,
            "message": f"{path}: {error}; clip {str(clip_id)!r} has no {backbone} frames (stored as NaN, which "
                       "featurestore.verify reports). Restore the file and run featurestore.verify --repair, then "
                       "the build again; or run the build with --overwrite to plan the clips without it"}


def _built_names(backbones, name) -> set[str]:
    """The store names of the backbones a build writes (``--name``, else each one's registry name)."""
    if name:
        return {name}
    out = set()
    for bb in backbones:
        try:
            out.add(resolve(bb).name)
        except KeyError:
            out.add(str(bb))
    return out


def check_layers_published(ext: ExtractSettings, backbones, model_path=None) -> None:
    """ValueError naming ``--layers`` when it asks for a hidden state past the published count of a
    registry backbone (loaded from its own weights: ``model_path`` None), so that nothing is written;
    other models are checked once loaded (:func:`extract_backbone`)."""
    if ext.layers is None or model_path is not None:
        return
    for bb in backbones:
        try:
            spec = resolve(bb)
        except KeyError:
            continue
        if spec.name in REGISTRY and spec.expected_layers and max(ext.layers) >= spec.expected_layers:
            raise ValueError(f"--layers {','.join(map(str, ext.layers))}: {spec.name} has hidden states "
                             f"0..{spec.expected_layers - 1} ({spec.expected_layers} layers)")


def _remove_empty_store(store_path, lock: StoreLock) -> None:
    """Delete the folder a failed build created, if no clip table was written into it (by this or by
    another build of the same store: checked under the lock). ``store_path``: a local path or URL."""
    loc = Location(store_path)
    try:
        with lock.hold("removing the empty store folder of a failed build"):
            if not loc.exists(layout.CLIPS):
                loc.remove()
    except (LockTimeout, OSError):
        pass  # leave the folder: another build holds the store


def dir_size(path: Path) -> int:
    """Bytes on disk under a folder."""
    loc = Location(path)
    if loc.is_url:
        return int(loc.fs.du(loc.fs_path, total=True))
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def format_report(report: BuildReport) -> str:
    lines = [f"store       {report.store}",
             f"clips       {report.clips}",
             f"size        {dir_size(report.store) / 2**20:.1f} MiB on disk",
             f"time        {report.seconds:.1f} s"]
    for name, s in report.backbones.items():
        state = "complete" if s["complete"] else f"{s['units_done']}/{s['units']} units"
        rank = f"(rank {s['rank']}) " if s.get("rank") else ""
        lines.append(f"backbone    {name}: {rank}{s['frames']} frames x {s['layers']} layers x {s['dim']} dims, "
                     f"{state}, {s['audio_seconds']:.1f} audio-s in {s['seconds']:.1f} s "
                     f"({s['audio_seconds'] / max(s['seconds'], 1e-9):.1f}x real time), "
                     f"{s['frames_allocated'] - s['frames']} alignment frames"
                     + (", pooled rows only (--frames none)" if s.get("frames_stored") == layout.FRAMES_NONE else "")
                     + (f", {s['units_skipped']} unit(s) left to another build that finished them first"
                        if s.get("units_skipped") else ""))
    if report.skipped:
        lines.append(f"skipped     {len(report.skipped)}:")
        lines += [f"  - [{s['reason']}] {s['message']}" for s in report.skipped]
    else:
        lines.append("skipped     none")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------

#: The demo store cuts the 5 s demo clips into 1 s segments: 160 clips, so that the demo's train /
#: valid / test splits hold enough clips to score heads on.
DEMO_SEGMENT_S = 1.0


def default_demo_dir() -> Path:
    """Where the demo corpus and store live: $SINGFRONT_HOME or ~/.cache/singfront."""
    return Path(os.environ.get("SINGFRONT_HOME", Path.home() / ".cache" / "singfront")) / "demo"


def ensure_demo_corpus() -> Path:
    """Generate the demo corpus if needed; return its manifest path."""
    from featurestore.demo import make_demo_corpus

    return make_demo_corpus(default_demo_dir() / "corpus")


def parse_args(argv=None) -> argparse.Namespace:
    names = ", ".join(sorted(REGISTRY))
    aliases = ", ".join(f"{k}={v}" for k, v in sorted(ALIASES.items()))
    p = argparse.ArgumentParser(
        prog="python -m featurestore.build",
        description="Run a frontend once over a dataset and store every hidden layer in a Zarr store "
                    "(frames, per-clip offsets, pooled mean/std, clip table, provenance). With no --input, "
                    "builds the built-in demo store.",
        formatter_class=HelpFormatter)
    io = p.add_argument_group("input and store")
    io.add_argument("--input", help="folder of audio files (wav/flac/mp3), or a CSV/JSON manifest with columns "
                                    "path, optional id, split, start, end (seconds) and any label columns. "
                                    "Default: for an existing --store, the input and clip settings it was "
                                    "planned from (unless a clip option is given); else the built-in demo corpus")
    io.add_argument("--store", help="Zarr store to create or extend: a folder, or an fsspec URL (s3://bucket/x.zarr, "
                                     "gs://..., file:///shared/x.zarr; use --shard-frames there). "
                                     "Default: <input>.zarr, or the demo store")
    io.add_argument("--backbone", action="append",
                    help=f"frontend(s) to extract; repeat to add several. Registry: {names}. Aliases: {aliases}. "
                         f"Also any transformers audio model id or local folder, or hear:MODULE (an installed HEAR "
                         f"2021 module; stored as hear-MODULE). Default: {DEFAULT_BACKBONE}")
    io.add_argument("--model-path", help="local folder to load the (single) --backbone's weights from (for "
                                         "hear:MODULE: the file passed to its load_model)")
    io.add_argument("--name", help="store the (single) backbone under this name")
    io.add_argument("--local-files-only", action="store_true",
                    help="load Hugging Face models from the offline cache only (like HF_HUB_OFFLINE=1)")
    io.add_argument("--trust-remote-code", action="store_true",
                    help="let a transformers model run Python code from its own repository or folder. Off by "
                         "default for every name, id and folder: registry models (MERT included) load into "
                         "transformers' own classes. Only for a model you trust: the code runs with your rights")
    io.add_argument("--attention", choices=ATTENTION_KINDS, default=None,
                    help="attention kernel of transformers models: sdpa (scaled-dot-product attention) or eager; "
                         "default sdpa where transformers offers it (not WavLM)")
    pre = p.add_argument_group("preprocessing (store-level: every backbone sees the same clips)")
    pre.add_argument("--segment-seconds", type=float, default=None,
                     help=f"segment length in seconds; 0 keeps whole files (windowed at extraction). "
                          f"Default 5, or {DEMO_SEGMENT_S} for the demo")
    pre.add_argument("--min-segment-seconds", type=float, default=1.0,
                     help="keep a last, shorter segment only if at least this long")
    pre.add_argument("--trim-db", type=float, default=None,
                     help="trim leading/trailing audio whose 50 ms RMS is below this dBFS (e.g. -40)")
    pre.add_argument("--drop-quiet-db", type=float, default=None,
                     help="drop segments whose RMS is below this dBFS (non-vocal chunks)")
    pre.add_argument("--separate-vocals", nargs="?", const="htdemucs", default=None, metavar="MODEL",
                     help="separate vocals with demucs first (default model htdemucs); cached per file")
    pre.add_argument("--demucs-repo", help="local folder with the demucs weights (default: demucs' own lookup)")
    pre.add_argument("--vocals-cache", help="folder for separated vocals (default: <store>.vocals)")
    ex = p.add_argument_group("extraction")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ex.add_argument("--batch-seconds", type=float, default=None,
                    help="padded audio seconds per batch (batches are sized by total samples, not clip count); "
                         "default 80 on CUDA, 10 on CPU")
    ex.add_argument("--window-seconds", type=float, default=30.0,
                    help="longest input (s) the model sees in one pass, context margins included; longer "
                         "clips are windowed")
    ex.add_argument("--context-seconds", type=float, default=5.0,
                    help="windows of a longer clip overlap so that every stored frame sees at least this much "
                         "audio (s) beyond its span on each side (where the clip has it); the margins are "
                         "computed and dropped. Must be less than half of --window-seconds; 0 gives "
                         "non-overlapping windows; CREPE and log-mel frames need none and ignore it")
    ex.add_argument("--num-workers", type=int, default=2, help="audio decoding worker processes")
    add_store_format_arguments(ex)
    ex.add_argument("--chunk-frames", type=int, default=256, help="frames per Zarr chunk")
    ex.add_argument("--shard-frames", type=int, default=None,
                    help="frames per Zarr shard (off by default; for object stores / very many files)")
    ex.add_argument("--unit-frames", type=int, default=8192,
                    help="frames per unit of work (the grain of resume and of parallel writers); a clip with "
                         "more frames is decoded, extracted and marked done in pieces of this size, so memory "
                         "does not grow with a clip's length and a killed long clip resumes from its last piece")
    ex.add_argument("--shard", default="0/1", metavar="I/N",
                    help="process only units u with u %% N == I (several processes, one store, no locks); "
                         "run once with --plan-only first")
    ex.add_argument("--rank", default=None, metavar="I/N",
                    help="without torchrun: extract only the units rank I of an N-process torchrun build "
                         "extracts (balanced by audio seconds), e.g. to redo one rank that died; the store "
                         "must be planned. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) each process "
                         "takes its rank from the environment, rank 0 plans, and --device cuda means "
                         "cuda:LOCAL_RANK")
    run = p.add_argument_group("control")
    run.add_argument("--plan-only", action="store_true",
                     help="only plan the clip table and the --backbone layouts, extract nothing")
    run.add_argument("--overwrite", action="store_true",
                     help="rebuild what was stored with other settings (clip table or backbone) instead of failing")
    run.add_argument("--strict", action="store_true",
                     help="exit non-zero if the report has any line (an input skipped, truncated, or cut short "
                          "by a manifest end past the end of its file)")
    run.add_argument("--fingerprint", choices=fpr.MODES, default=None,
                     help="how a later run notices changed input files: stat (size and modification time, "
                          "cheap) or content (size and sha256 of every file, read on every run). Recorded in "
                          "the store; default: the store's mode, stat for a new store")
    run.add_argument("--lock", choices=LOCK_KINDS, default="auto",
                     help="how builds of one store exclude each other while planning it (extraction itself "
                          "takes no lock): flock (an OS lock on <store>.lock), lease (a lease file "
                          "<store>.lease renewed while held, for file systems without OS locks), or auto "
                          "(flock where the file system supports it). Every build of a store must use the same")
    run.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                     help="give up (exit 2 with a message naming the holder) after waiting this long for another "
                          "build's lock on the store; default: wait, with a message, as long as it takes")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    for opt in ("shard", "rank"):
        value = getattr(args, opt)
        if value is None:
            continue
        try:
            i, n = (int(v) for v in value.split("/"))
            if not 0 <= i < n:
                raise ValueError
            setattr(args, opt, (i, n))
        except ValueError:
            p.error(f"--{opt} expects I/N with 0 <= I < N, got {value!r}")
    if args.chunk_frames < 1 or args.unit_frames < 1:
        p.error("--chunk-frames and --unit-frames must be >= 1")
    if args.shard_frames is not None and (args.shard_frames < 1 or args.shard_frames % args.chunk_frames):
        p.error(f"--shard-frames must be a positive multiple of --chunk-frames ({args.chunk_frames})")
    if args.batch_seconds is not None and args.batch_seconds <= 0 or args.window_seconds <= 0:
        p.error("--batch-seconds and --window-seconds must be > 0")
    if args.lock_timeout is not None and not args.lock_timeout >= 0:
        p.error(f"--lock-timeout must be >= 0 seconds, got {args.lock_timeout}")
    if not args.context_seconds >= 0 or args.context_seconds == float("inf"):
        p.error(f"--context-seconds must be >= 0, got {args.context_seconds}")
    if args.model_path and args.backbone and len(args.backbone) > 1:
        p.error("--model-path applies to a single --backbone")
    if args.name and args.backbone and len(args.backbone) > 1:
        p.error("--name applies to a single --backbone")
    try:
        args.layers = parse_layer_list(args.layers)
    except ValueError as e:
        p.error(str(e))
    if args.dtype == "int8" and args.frames == layout.FRAMES_NONE:
        p.error("--dtype int8 quantises frames and --frames none stores none: leave --dtype out with --frames none")
    return args


def parse_layer_list(text: str | None) -> tuple[int, ...] | None:
    """``--layers I,J,...`` -> sorted distinct model layer indices (None stays None: every layer);
    ValueError naming the option for anything else."""
    if text is None:
        return None
    try:
        layers = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--layers expects comma-separated layer indices such as 0,6,12, got {text!r}") from None
    if not layers or layers[0] < 0:
        raise ValueError(f"--layers expects layer indices >= 0, got {text!r}")
    return tuple(layers)


def add_store_format_arguments(p) -> None:
    """``--dtype``, ``--frames`` and ``--layers``: what a backbone's store keeps (shared with the
    task pipelines' ``build``)."""
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                   help="storage of frames and pooled rows: float16, float32, or int8 (frames as 8-bit codes "
                        "with a float32 offset and step per chunk, layer and channel: 0.52x the bytes of float16, "
                        "error at most half a step, 0.2 %% of the channel's range in the chunk; pooled rows "
                        "float16, computed from the unquantised frames; read back as float32)")
    p.add_argument("--frames", choices=layout.FRAMES_MODES, default=layout.FRAMES_ALL,
                   help="all: store every frame; none: store only the pooled mean/std rows (clip heads, "
                        "layer sweeps and pipelines of clip tasks work; frame heads and frame reads refuse)")
    p.add_argument("--layers", default=None, metavar="I,J,...",
                   help="keep only these hidden states (the model's layer indices, 0 = the CNN/input "
                        "embedding); the store records them and readers, heads and plots use these indices. "
                        "Default: every layer")


def _ranks(args: argparse.Namespace) -> Ranks | None:
    """This process's rank: from torchrun's environment (joining its process group; ``args.device``
    becomes the rank's device), from ``--rank I/N`` (no group), or None for a plain build. Raises
    ValueError for a torchrun build combined with --shard or --rank, or a bad torchrun environment."""
    ranks = distributed.from_env()
    if ranks is None:
        return Ranks(*args.rank) if args.rank else None
    if args.rank or args.shard[1] > 1:
        raise ValueError("--rank and --shard are for builds outside torchrun; under torchrun each process "
                         "takes its share from RANK and WORLD_SIZE")
    args.device = distributed.rank_device(args.device, ranks)
    return distributed.init(ranks, args.device)


def _store_arg(store: str):
    """--store as given: an fsspec URL stays a string, anything else is a local path."""
    return store if is_url(store) else Path(store)


def recorded_plan(store_path) -> tuple[Path, ClipSettings] | None:
    """(input, clip settings) an existing store's clip table was planned from, as its root attributes
    record them; None for a new, ingested or unreadable store. ``store_path``: a local path or URL."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(store_path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - no store there, or one the build itself will name as damaged
        return None
    if not isinstance(attrs.get("input"), str) or not isinstance(attrs.get("clip_settings"), dict):
        return None
    return Path(attrs["input"]), ClipSettings.from_dict(attrs["clip_settings"])


def _clip_options_given(args) -> bool:
    """Was any option that changes the clip table given (not at its default)?"""
    return (args.segment_seconds is not None or args.min_segment_seconds != ClipSettings.min_segment_s
            or any(v is not None for v in (args.trim_db, args.drop_quiet_db, args.separate_vocals, args.demucs_repo)))


def main(argv=None) -> int:
    args = parse_args(argv)
    progress = not args.no_progress
    existing = args.input is None and args.store and Location(_store_arg(args.store)).exists()
    recorded = recorded_plan(_store_arg(args.store)) if existing else None
    if existing and recorded is None:
        print(f"error: --store {args.store} exists, but the input it was planned from cannot be read from it "
              "(damaged root metadata, an ingested store, or not a feature store): give --input", file=sys.stderr)
        return 2
    if recorded is not None:
        # an existing store given without --input: more backbones on the clips it was planned from
        input_path, store = recorded[0], _store_arg(args.store)
        print(f"note: no --input: {store} is extended from the input it was planned from, {input_path}",
              file=sys.stderr)
        if _clip_options_given(args):
            recorded = None  # the options given are compared with the store's, as with --input
        else:
            clip_settings = recorded[1]
    elif args.input is None:
        manifest = ensure_demo_corpus()
        input_path, store = manifest, _store_arg(args.store) if args.store else default_demo_dir() / "store.zarr"
    else:
        input_path = Path(args.input)
        store = _store_arg(args.store) if args.store else input_path.with_name(input_path.stem + ".zarr")
    if args.segment_seconds is None:
        args.segment_seconds = DEMO_SEGMENT_S if args.input is None and not existing else 5.0
    if recorded is None:
        clip_settings = ClipSettings(segment_s=args.segment_seconds or None, min_segment_s=args.min_segment_seconds,
                                     trim_db=args.trim_db, drop_quiet_db=args.drop_quiet_db,
                                     separate=args.separate_vocals, demucs_repo=args.demucs_repo)
    ext = ExtractSettings(dtype=args.dtype, window_s=args.window_seconds, context_s=args.context_seconds,
                          batch_s=args.batch_seconds,
                          chunk_frames=args.chunk_frames, shard_frames=args.shard_frames,
                          target_unit_frames=args.unit_frames, frames=args.frames, layers=args.layers)
    try:
        ranks = _ranks(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        report = build(input_path, store, args.backbone or [DEFAULT_BACKBONE], clip_settings=clip_settings,
                       extract=ext, model_path=args.model_path, name=args.name,
                       local_files_only=args.local_files_only, trust_remote_code=args.trust_remote_code,
                       attention=args.attention, device=args.device,
                       num_workers=args.num_workers, overwrite=args.overwrite, shard=args.shard,
                       vocals_cache=args.vocals_cache, progress=progress, plan_only=args.plan_only,
                       fingerprint=args.fingerprint, lock=args.lock, lock_timeout=args.lock_timeout,
                       ranks=ranks)
    except (SettingsMismatch, FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        print(f"error: {e}" if ranks is None else f"error (rank {ranks.rank}/{ranks.world_size}): {e}",
              file=sys.stderr)
        return 2
    finally:
        distributed.close(ranks)
    if args.json:
        print(json.dumps(report.__dict__, indent=2, default=str))
    else:
        print(format_report(report))
    if args.strict and report.skipped:
        print(f"--strict: {len(report.skipped)} input(s) skipped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
