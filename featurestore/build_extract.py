"""Extracting a planned backbone: running the frontend over the units not done yet.

The second half of :func:`featurestore.build.build`: :func:`extract_backbone` plans the backbone if
needed (:mod:`featurestore.build_plan`), picks this process's units (``--shard``, ``--rank``,
torchrun), decodes their audio in DataLoader workers, runs the frontend
(:func:`featurestore.extract.run_unit`), hands each unit to the background writer, and marks the
backbone complete once every unit is done.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from featurestore import distributed, layout
from featurestore.build_plan import ExtractSettings, _array_address, _default_lock, _plan_backbone, _reopen
from featurestore.clips import clip_samples
from featurestore.distributed import Ranks
from featurestore.extract import UnitAudio, WindowGeometry, file_stat, run_unit, window_plan
from featurestore.frontends import Frontend
from featurestore.locking import StoreLock
from featurestore.names import check_backbone_name
from featurestore.writer import BackgroundWriter, finish_split_clip


def resolve_batch_seconds(batch_s: float | None, device) -> float:
    """Padded audio seconds per batch: as given, else 80 s on CUDA and 10 s on CPU (on 2 CPU cores
    CREPE tiny ran about 15 % slower in 80 s batches than in 5-10 s ones: the intermediates of a
    large batch no longer fit in cache)."""
    if batch_s is not None:
        return float(batch_s)
    return 80.0 if torch.device(device).type == "cuda" else 10.0


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
    identity = {**ext.identity(fe.frame_local), "weights_hash": fe.weights_hash(), **fe.geometry.as_dict(),
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


def _vanished(backbone: str, clip_id, path: str, error: str) -> dict:
    """The report line of a clip whose file went bad during extraction (:class:`featurestore.extract.UnitAudio`)."""
    reason = "vanished" if error.startswith("vanished") else "changed" if error.startswith("changed") else "unreadable"
    return {"where": str(clip_id), "reason": reason, "path": path,
            "message": f"{path}: {error}; clip {str(clip_id)!r} has no {backbone} frames (stored as NaN, which "
                       "featurestore.verify reports). Restore the file and run featurestore.verify --repair, then "
                       "the build again; or run the build with --overwrite to plan the clips without it"}
