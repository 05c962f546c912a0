"""The library call under ``python -m featurestore.build``: :func:`build` plans the clip table
(:mod:`featurestore.build_plan`) and extracts each backbone (:mod:`featurestore.build_extract`);
also where the demo corpus lives. :mod:`featurestore.build` is the command line and re-exports these
names (``from featurestore.build import build`` is the public spelling).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from featurestore import layout
from featurestore.build_extract import extract_backbone
from featurestore.build_plan import ExtractSettings, _ensure_clip_table, check_layers_published
from featurestore.clips import ClipSettings
from featurestore.distributed import Ranks
from featurestore.frontends import load_frontend
from featurestore.location import Location
from featurestore.locking import LockTimeout, StoreLock
from featurestore.metadata_check import clear_damaged, damaged_metadata
from featurestore.names import check_backbone_name
from featurestore.registry import DEFAULT_BACKBONE, resolve
from featurestore.writer import open_root


@dataclass
class BuildReport:
    store: str
    clips: int = 0
    skipped: list = field(default_factory=list)
    backbones: dict = field(default_factory=dict)
    seconds: float = 0.0


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
    if model_path is not None and not Path(os.path.expanduser(str(model_path))).exists():
        raise FileNotFoundError(f"--model-path {model_path}: no such file or folder")  # before anything is written
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
