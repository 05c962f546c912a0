"""Planning a store build: the clip table (once per store) and each backbone's layout.

The first half of :func:`featurestore.build.build`: :func:`_ensure_clip_table` plans the clips from
the input (under the store's lock, checking the settings and input fingerprint of an existing
table), :func:`_plan_backbone` lays a backbone out on them (its units and frame offsets,
:func:`featurestore.backbone_plan.plan_backbone`) unless a sound plan with the same settings
exists. :class:`ExtractSettings` holds the backbone-level settings both halves use. Extraction is
:mod:`featurestore.build_extract`, the command line :mod:`featurestore.build`.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import featurestore
from featurestore import layout
from featurestore import fingerprint as fpr
from featurestore.backbone_plan import BackbonePlan, plan_backbone
from featurestore.clips import ClipSettings, plan_clips
from featurestore.frontends import Frontend
from featurestore.location import store_location
from featurestore.locking import StoreLock
from featurestore.manifest import read_inputs
from featurestore.registry import REGISTRY, resolve
from featurestore.verify import clip_table_problems, plan_problems
from featurestore.writer import create_backbone, open_root, write_clip_table


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
    """The backbone's layout on the store's clip table (:func:`featurestore.backbone_plan.plan_backbone`),
    and the attributes its plan is stored with."""
    clips = root[layout.CLIPS]
    plan, nf, samples = plan_backbone(clips["start_s"][:], clips["end_s"][:], fe.geometry, ext.target_unit_frames,
                                      ext.shard_frames or ext.chunk_frames)
    ids = clips["id"][:]
    short = [{"where": str(ids[i]), "reason": "too_short",
              "message": f"clip {ids[i]}: {int(samples[i])} samples give no {fe.name} frame "
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
