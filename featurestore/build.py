"""``python -m featurestore.build``: extract every hidden layer of a frontend into a Zarr store.

With no arguments it builds the built-in demo store (a synthetic sung-melody corpus, CREPE tiny)
and prints a summary. Run it again with another ``--backbone`` to add that backbone to the same
store; run it again after a crash to finish the job.

This module is the command line (arguments -> :class:`BuildSpec`, the settings declared once, from
options or a ``--config`` file -> :func:`run_build` -> a printed report) and the build's public face:
the work is :func:`featurestore.build_run.build`, planning the clip table and each backbone's layout
in :mod:`featurestore.build_plan` and extraction in :mod:`featurestore.build_extract`;
their public names are re-exported here (``from featurestore.build import build, ExtractSettings``).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from featurestore import distributed, layout
from featurestore import fingerprint as fpr
from featurestore.build_extract import (_audio_seconds, _work_order, extract_backbone, finish_split_clips,
                                        resolve_batch_seconds)
from featurestore.build_plan import DTYPES, ExtractSettings, SettingsMismatch, check_layers_published
from featurestore.build_run import BuildReport, DEMO_SEGMENT_S, build, default_demo_dir, ensure_demo_corpus
from featurestore.cli import HelpFormatter, parse_spec
from featurestore.clips import ClipSettings
from featurestore.distributed import Ranks
from featurestore.hf_loading import ATTENTION_KINDS
from featurestore.location import Location, is_url
from featurestore.locking import KINDS as LOCK_KINDS
from featurestore.options import SpecError, add_config_options, add_options, field_names, option
from featurestore.registry import ALIASES, DEFAULT_BACKBONE, REGISTRY

#: the build's public names: this module's command line, and what it re-exports from the modules doing the work
__all__ = ["BuildReport", "BuildSpec", "BuildTarget", "ClipSettings", "DEMO_SEGMENT_S", "DTYPES", "ExtractSettings",
           "RankFailed", "SettingsMismatch", "_audio_seconds", "_work_order", "add_store_format_arguments", "build",
           "build_target", "check_layers_published", "default_demo_dir", "dir_size", "ensure_demo_corpus",
           "extract_backbone", "extract_settings", "finish_split_clips", "format_report", "main", "parse_args",
           "parse_layer_list", "resolve_batch_seconds", "run_build"]


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


_NAMES = ", ".join(sorted(REGISTRY))
_ALIASES = ", ".join(f"{k}={v}" for k, v in sorted(ALIASES.items()))
#: help of --backbone, whose command-line form (repeated) add_options does not derive
_BACKBONE_HELP = (f"frontend(s) to extract; repeat to add several. Registry: {_NAMES}. Aliases: {_ALIASES}. Also any "
                  f"transformers audio model id or local folder, or hear:MODULE (an installed HEAR 2021 module; "
                  f"stored as hear-MODULE). Default: {DEFAULT_BACKBONE}")


def _pair(setting: str, value) -> tuple[int, int] | None:
    """``"I/N"`` (or [I, N]) -> (I, N) with 0 <= I < N; None stays None; SpecError naming ``setting``."""
    if value is None:
        return None
    try:
        i, n = (int(v) for v in (value.split("/") if isinstance(value, str) else value))
        if not 0 <= i < n:
            raise ValueError
    except (TypeError, ValueError):
        raise SpecError(setting, f"expects I/N with 0 <= I < N, got {value!r}") from None
    return i, n


@dataclass(frozen=True)
class BuildSpec:
    """The settings of one ``featurestore.build`` run (fields = the command's options, ``--config`` keys
    and keywords of :func:`run_build`), validated when made. Seconds for every ``*_seconds``, frames for
    every ``*_frames``; ``shard`` and ``rank``: (I, N) ("I/N" on the command line); ``layers``: model
    layer indices ("0,6,12"), None for every layer; ``backbone``: None for the default frontend."""

    input: str | None = option(None, "folder of audio files (wav/flac/mp3), or a CSV/JSON manifest with columns "
                                     "path, optional id, split, start, end (seconds) and any label columns. "
                                     "Default: for an existing --store, the input and clip settings it was "
                                     "planned from (unless a clip option is given); else the built-in demo corpus")
    store: str | None = option(None, "Zarr store to create or extend: a folder, or an fsspec URL "
                                     "(s3://bucket/x.zarr, gs://..., file:///shared/x.zarr; use --shard-frames "
                                     "there). Default: <input>.zarr, or the demo store")
    backbone: tuple[str, ...] | None = option(None, _BACKBONE_HELP)
    model_path: str | None = option(None, "local folder to load the (single) --backbone's weights from (for "
                                          "hear:MODULE: the file passed to its load_model)")
    name: str | None = option(None, "store the (single) backbone under this name")
    local_files_only: bool = option(False, "load Hugging Face models from the offline cache only (like "
                                           "HF_HUB_OFFLINE=1)")
    trust_remote_code: bool = option(False, "let a transformers model run Python code from its own repository "
                                            "or folder. Off by default for every name, id and folder: registry "
                                            "models (MERT included) load into transformers' own classes. Only "
                                            "for a model you trust: the code runs with your rights")
    attention: str | None = option(None, "attention kernel of transformers models: sdpa (scaled-dot-product "
                                         "attention) or eager; default sdpa where transformers offers it (not "
                                         "WavLM)", choices=ATTENTION_KINDS)
    # preprocessing
    segment_seconds: float | None = option(None, f"segment length in seconds; 0 keeps whole files (windowed at "
                                                 f"extraction). Default 5, or {DEMO_SEGMENT_S} for the demo")
    min_segment_seconds: float = option(1.0, "keep a last, shorter segment only if at least this long")
    trim_db: float | None = option(None, "trim leading/trailing audio whose 50 ms RMS is below this dBFS (e.g. -40)")
    drop_quiet_db: float | None = option(None, "drop segments whose RMS is below this dBFS (non-vocal chunks)")
    separate_vocals: str | None = option(None, "separate vocals with demucs first (default model htdemucs); "
                                               "cached per file", metavar="MODEL", nargs="?", const="htdemucs")
    demucs_repo: str | None = option(None, "local folder with the demucs weights (default: demucs' own lookup)")
    vocals_cache: str | None = option(None, "folder for separated vocals (default: <store>.vocals)")
    # extraction
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda if available)", identity=False)
    batch_seconds: float | None = option(None, "padded audio seconds per batch (batches are sized by total "
                                               "samples, not clip count); default 80 on CUDA, 10 on CPU",
                                         identity=False)
    window_seconds: float = option(30.0, "longest input (s) the model sees in one pass, context margins included; "
                                         "longer clips are windowed")
    context_seconds: float = option(5.0, "windows of a longer clip overlap so that every stored frame sees at "
                                         "least this much audio (s) beyond its span on each side (where the clip "
                                         "has it); the margins are computed and dropped. Must be less than half of "
                                         "--window-seconds; 0 gives non-overlapping windows; CREPE and log-mel "
                                         "frames need none and ignore it")
    num_workers: int = option(2, "audio decoding worker processes", identity=False)
    dtype: str = option("float16", "storage of frames and pooled rows: float16, float32, or int8 (frames as 8-bit "
                                   "codes with a float32 offset and step per chunk, layer and channel: 0.52x the "
                                   "bytes of float16, error at most half a step, 0.2 %% of the channel's range in "
                                   "the chunk; pooled rows float16, computed from the unquantised frames; read back "
                                   "as float32)", choices=sorted(DTYPES))
    frames: str = option(layout.FRAMES_ALL, "all: store every frame; none: store only the pooled mean/std rows "
                                            "(clip heads, layer sweeps and pipelines of clip tasks work; frame "
                                            "heads and frame reads refuse)", choices=layout.FRAMES_MODES)
    layers: tuple[int, ...] | None = option(None, "keep only these hidden states (the model's layer indices, 0 = "
                                                  "the CNN/input embedding); the store records them and readers, "
                                                  "heads and plots use these indices. Default: every layer",
                                            metavar="I,J,...")
    chunk_frames: int = option(256, "frames per Zarr chunk")
    shard_frames: int | None = option(None, "frames per Zarr shard (off by default; for object stores / very many "
                                            "files)")
    unit_frames: int = option(8192, "frames per unit of work (the grain of resume and of parallel writers); a "
                                    "clip with more frames is decoded, extracted and marked done in pieces of this "
                                    "size, so memory does not grow with a clip's length and a killed long clip "
                                    "resumes from its last piece")
    shard: tuple[int, int] = option((0, 1), "process only units u with u %% N == I (several processes, one store, "
                                            "no locks); run once with --plan-only first", metavar="I/N",
                                    identity=False)
    rank: tuple[int, int] | None = option(None, "without torchrun: extract only the units rank I of an N-process "
                                                "torchrun build extracts (balanced by audio seconds), e.g. to redo "
                                                "one rank that died; the store must be planned. Under torchrun "
                                                "(RANK, WORLD_SIZE, LOCAL_RANK set) each process takes its rank "
                                                "from the environment, rank 0 plans, and --device cuda means "
                                                "cuda:LOCAL_RANK", metavar="I/N", identity=False)
    # control
    plan_only: bool = option(False, "only plan the clip table and the --backbone layouts, extract nothing")
    overwrite: bool = option(False, "rebuild what was stored with other settings (clip table or backbone) instead "
                                    "of failing", identity=False)
    strict: bool = option(False, "exit non-zero if the report has any line (an input skipped, truncated, or cut "
                                 "short by a manifest end past the end of its file)", identity=False)
    fingerprint: str | None = option(None, "how a later run notices changed input files: stat (size and "
                                           "modification time, cheap) or content (size and sha256 of every file, "
                                           "read on every run). Recorded in the store; default: the store's mode, "
                                           "stat for a new store", choices=fpr.MODES)
    lock: str = option("auto", "how builds of one store exclude each other while planning it (extraction itself "
                               "takes no lock): flock (an OS lock on <store>.lock), lease (a lease file "
                               "<store>.lease renewed while held, for file systems without OS locks), or auto "
                               "(flock where the file system supports it). Every build of a store must use the "
                               "same", choices=LOCK_KINDS, identity=False)
    lock_timeout: float | None = option(None, "give up (exit 2 with a message naming the holder) after waiting "
                                              "this long for another build's lock on the store; default: wait, "
                                              "with a message, as long as it takes", metavar="SECONDS",
                                        identity=False)
    no_progress: bool = option(False, "no progress bars", identity=False)
    json: bool = option(False, "print the report as JSON", identity=False)

    def __post_init__(self):
        bb = self.backbone
        if bb is not None:
            bb = (bb,) if isinstance(bb, str) else tuple(str(b) for b in bb)
            object.__setattr__(self, "backbone", bb or None)
        object.__setattr__(self, "shard", _pair("shard", self.shard))
        object.__setattr__(self, "rank", _pair("rank", self.rank))
        try:
            object.__setattr__(self, "layers", parse_layer_list(
                ",".join(map(str, self.layers)) if isinstance(self.layers, (list, tuple)) else self.layers))
        except ValueError as e:
            raise SpecError("layers", str(e).removeprefix("--layers ")) from None
        for name in ("chunk_frames", "unit_frames"):
            if getattr(self, name) < 1:
                raise SpecError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.shard_frames is not None and (self.shard_frames < 1 or self.shard_frames % self.chunk_frames):
            raise SpecError("shard_frames", f"must be a positive multiple of chunk_frames ({self.chunk_frames}), "
                                            f"got {self.shard_frames}")
        if self.batch_seconds is not None and not self.batch_seconds > 0:
            raise SpecError("batch_seconds", f"must be > 0, got {self.batch_seconds}")
        if not self.window_seconds > 0:
            raise SpecError("window_seconds", f"must be > 0, got {self.window_seconds}")
        if self.lock_timeout is not None and not self.lock_timeout >= 0:
            raise SpecError("lock_timeout", f"must be >= 0 seconds, got {self.lock_timeout}")
        if not self.context_seconds >= 0 or self.context_seconds == float("inf"):
            raise SpecError("context_seconds", f"must be >= 0, got {self.context_seconds}")
        if self.num_workers < 0:
            raise SpecError("num_workers", f"must be >= 0, got {self.num_workers}")
        for name in ("model_path", "name"):
            if getattr(self, name) and self.backbone and len(self.backbone) > 1:
                raise SpecError(name, "applies to a single backbone")
        if self.dtype == "int8" and self.frames == layout.FRAMES_NONE:
            raise SpecError("dtype", "int8 quantises frames and frames none stores none: leave dtype out with "
                                     "frames none")


class _AppendOrReplace(argparse.Action):
    """``action="append"`` whose first use on the command line replaces the default (a ``--config``
    file's list) instead of adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        setattr(namespace, self.dest, items + [values])


def _add_fields(group, names, defaults: dict | None = None) -> None:
    """The options of the fields ``names`` of :class:`BuildSpec`, in their declared order, to ``group``
    (``defaults``: shown instead of the fields' own, as add_options takes them)."""
    add_options(group, BuildSpec, skip=field_names(BuildSpec) - set(names), defaults=defaults)


def parse_args(argv=None) -> BuildSpec:
    """The command line (see ``--help``) -> the spec; a bad option or setting exits 2 naming it,
    ``--print-config`` prints the spec as YAML and exits 0."""
    p = argparse.ArgumentParser(
        prog="python -m featurestore.build",
        description="Run a frontend once over a dataset and store every hidden layer in a Zarr store "
                    "(frames, per-clip offsets, pooled mean/std, clip table, provenance). With no --input, "
                    "builds the built-in demo store.",
        formatter_class=HelpFormatter)
    io = p.add_argument_group("input and store")
    _add_fields(io, ("input", "store"))
    io.add_argument("--backbone", action=_AppendOrReplace, default=None, help=_BACKBONE_HELP)
    _add_fields(io, ("model_path", "name", "local_files_only", "trust_remote_code", "attention"))
    pre = p.add_argument_group("preprocessing (store-level: every backbone sees the same clips)")
    _add_fields(pre, ("segment_seconds", "min_segment_seconds", "trim_db", "drop_quiet_db", "separate_vocals",
                      "demucs_repo", "vocals_cache"))
    ex = p.add_argument_group("extraction")
    _add_fields(ex, ("device", "batch_seconds", "window_seconds", "context_seconds", "num_workers", "dtype", "frames",
                     "layers", "chunk_frames", "shard_frames", "unit_frames"))
    _add_fields(ex, ("shard", "rank"), defaults={"shard": "0/1"})
    run = p.add_argument_group("control")
    _add_fields(run, ("plan_only", "overwrite", "strict", "fingerprint", "lock", "lock_timeout", "no_progress",
                      "json"))
    add_config_options(run)
    return parse_spec(p, BuildSpec, argv)


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
    task pipelines' ``build``; declared by :class:`BuildSpec`)."""
    _add_fields(p, ("dtype", "frames", "layers"))


def _ranks(device: str | None, rank: tuple[int, int] | None, shard: tuple[int, int]) -> tuple[Ranks | None, str | None]:
    """This process's rank and its device: from torchrun's environment (joining its process group; the
    device becomes the rank's), from ``rank`` (I, N) (no group), or (None, device) for a plain build.
    Raises SpecError for a torchrun build combined with a shard or rank, ValueError for a bad torchrun
    environment."""
    ranks = distributed.from_env()
    if ranks is None:
        return (Ranks(*rank) if rank else None), device
    if rank or shard[1] > 1:
        raise SpecError("rank" if rank else "shard", "rank and shard are for builds outside torchrun; under "
                        "torchrun each process takes its share from RANK and WORLD_SIZE")
    device = distributed.rank_device(device, ranks)
    return distributed.init(ranks, device), device


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


def _clip_options_given(spec: BuildSpec) -> bool:
    """Was any setting that changes the clip table given (not at its default)?"""
    return (spec.segment_seconds is not None or spec.min_segment_seconds != ClipSettings.min_segment_s
            or any(v is not None for v in (spec.trim_db, spec.drop_quiet_db, spec.separate_vocals, spec.demucs_repo)))


@dataclass(frozen=True)
class BuildTarget:
    """What a :class:`BuildSpec` builds: the input (folder or manifest), the store (path or URL), the
    clip settings, and ``note``: a line for the user when the input was taken from the store, else None."""

    input: Path
    store: Path | str
    clip_settings: ClipSettings
    note: str | None = None


def build_target(spec: BuildSpec) -> BuildTarget:
    """The input, store and clip settings of ``spec``: given, the demo corpus (no input, no existing
    store), or what an existing store given without an input was planned from (its clip settings
    too, unless a clip setting is given). SpecError naming ``store`` for an existing store whose
    input cannot be read from it."""
    existing = spec.input is None and spec.store and Location(_store_arg(spec.store)).exists()
    recorded = recorded_plan(_store_arg(spec.store)) if existing else None
    if existing and recorded is None:
        raise SpecError("store", f"{spec.store} exists, but the input it was planned from cannot be read from it "
                                 "(damaged root metadata, an ingested store, or not a feature store): give input")
    note = None
    if recorded is not None:
        # an existing store given without an input: more backbones on the clips it was planned from
        input_path, store = recorded[0], _store_arg(spec.store)
        note = f"no --input: {store} is extended from the input it was planned from, {input_path}"
        if not _clip_options_given(spec):
            return BuildTarget(input_path, store, recorded[1], note)
    elif spec.input is None:
        input_path = ensure_demo_corpus()
        store = _store_arg(spec.store) if spec.store else default_demo_dir() / "store.zarr"
    else:
        input_path = Path(spec.input)
        store = _store_arg(spec.store) if spec.store else input_path.with_name(input_path.stem + ".zarr")
    segment = spec.segment_seconds
    if segment is None:
        segment = DEMO_SEGMENT_S if spec.input is None and not existing else 5.0
    clip_settings = ClipSettings(segment_s=segment or None, min_segment_s=spec.min_segment_seconds,
                                 trim_db=spec.trim_db, drop_quiet_db=spec.drop_quiet_db,
                                 separate=spec.separate_vocals, demucs_repo=spec.demucs_repo)
    return BuildTarget(input_path, store, clip_settings, note)


def extract_settings(spec: BuildSpec) -> ExtractSettings:
    """How ``spec`` extracts and stores each backbone."""
    return ExtractSettings(dtype=spec.dtype, window_s=spec.window_seconds, context_s=spec.context_seconds,
                           batch_s=spec.batch_seconds, chunk_frames=spec.chunk_frames,
                           shard_frames=spec.shard_frames, target_unit_frames=spec.unit_frames,
                           frames=spec.frames, layers=spec.layers)


#: the errors of a build that the command line reports in one line (exit status 2)
_BUILD_ERRORS = (SettingsMismatch, FileNotFoundError, ValueError, KeyError, RuntimeError, OSError)


class RankFailed(RuntimeError):
    """A torchrun build failed in this process: ``rank`` of ``world_size``; the error is ``__cause__``."""

    def __init__(self, rank: int, world_size: int, error: BaseException):
        super().__init__(f"(rank {rank}/{world_size}): {error}")
        self.rank, self.world_size = rank, world_size


def run_build(spec: BuildSpec, target: BuildTarget | None = None) -> BuildReport:
    """Build what ``spec`` says (:func:`build_target` unless ``target`` is given) with :func:`build`,
    joining torchrun's process group when started by torchrun -> the report. Raises what
    :func:`build` raises (SettingsMismatch, FileNotFoundError, ValueError ...), SpecError for a refused
    setting, and under torchrun :class:`RankFailed` from the build's error."""
    target = target or build_target(spec)
    ranks, device = _ranks(spec.device, spec.rank, spec.shard)
    try:
        return build(target.input, target.store, list(spec.backbone or [DEFAULT_BACKBONE]),
                     clip_settings=target.clip_settings, extract=extract_settings(spec), model_path=spec.model_path,
                     name=spec.name, local_files_only=spec.local_files_only,
                     trust_remote_code=spec.trust_remote_code, attention=spec.attention, device=device,
                     num_workers=spec.num_workers, overwrite=spec.overwrite, shard=spec.shard,
                     vocals_cache=spec.vocals_cache, progress=not spec.no_progress, plan_only=spec.plan_only,
                     fingerprint=spec.fingerprint, lock=spec.lock, lock_timeout=spec.lock_timeout, ranks=ranks)
    except _BUILD_ERRORS as e:
        if ranks is None:
            raise
        raise RankFailed(ranks.rank, ranks.world_size, e) from e
    finally:
        distributed.close(ranks)


def main(argv=None) -> int:
    """The command line: arguments -> :class:`BuildSpec` -> :func:`run_build` -> the printed report."""
    spec = parse_args(argv)
    try:
        target = build_target(spec)
        if target.note:
            print(f"note: {target.note}", file=sys.stderr)
        report = run_build(spec, target)
    except SpecError as e:
        print(f"error: {e.as_flag()}", file=sys.stderr)
        return 2
    except RankFailed as e:
        print(f"error {e}", file=sys.stderr)
        return 2
    except _BUILD_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if spec.json:
        print(json.dumps(report.__dict__, indent=2, default=str))
    else:
        print(format_report(report))
    if spec.strict and report.skipped:
        print(f"--strict: {len(report.skipped)} input(s) skipped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
