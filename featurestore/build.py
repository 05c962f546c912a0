"""``python -m featurestore.build``: extract every hidden layer of a frontend into a Zarr store.

With no arguments it builds the built-in demo store (a synthetic sung-melody corpus, CREPE tiny)
and prints a summary. Run it again with another ``--backbone`` to add that backbone to the same
store; run it again after a crash to finish the job.

This module is the command line (arguments -> :func:`build` -> a printed report) and the build's
public face: the work is :func:`featurestore.build_run.build`, planning the clip table and each
backbone's layout in :mod:`featurestore.build_plan` and extraction in :mod:`featurestore.build_extract`;
their public names are re-exported here (``from featurestore.build import build, ExtractSettings``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from featurestore import distributed, layout
from featurestore import fingerprint as fpr
from featurestore.build_extract import (_audio_seconds, _work_order, extract_backbone, finish_split_clips,
                                        resolve_batch_seconds)
from featurestore.build_plan import DTYPES, ExtractSettings, SettingsMismatch, check_layers_published
from featurestore.build_run import BuildReport, DEMO_SEGMENT_S, build, default_demo_dir, ensure_demo_corpus
from featurestore.cli import HelpFormatter
from featurestore.clips import ClipSettings
from featurestore.distributed import Ranks
from featurestore.hf_loading import ATTENTION_KINDS
from featurestore.location import Location, is_url
from featurestore.locking import KINDS as LOCK_KINDS
from featurestore.registry import ALIASES, DEFAULT_BACKBONE, REGISTRY

#: the build's public names: this module's command line, and what it re-exports from the modules doing the work
__all__ = ["BuildReport", "ClipSettings", "DEMO_SEGMENT_S", "DTYPES", "ExtractSettings", "SettingsMismatch",
           "_audio_seconds", "_work_order", "add_store_format_arguments", "build", "check_layers_published",
           "default_demo_dir", "dir_size", "ensure_demo_corpus", "extract_backbone", "finish_split_clips",
           "format_report", "main", "parse_args", "parse_layer_list", "resolve_batch_seconds"]


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
