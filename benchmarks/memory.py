"""``python -m benchmarks.memory``: peak memory (RSS) of ``featurestore.build`` on one long recording
of 10, 40 and 120 minutes. Memory must not grow with the recording's length: a long clip is
decoded and extracted piece by piece (:mod:`featurestore.layout`), so the peaks should agree within
``--tolerance`` (15 %).

For each length it writes a 16 kHz PCM_16 WAV (noise and a gliding tone, written in blocks, so the
generator holds one minute at a time), then runs each build in a **fresh Python process** and reads
that process's own peak RSS (``VmHWM`` of ``/proc/self/status``) and the peak RSS of its decoding
workers (``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)``) when the build returns. One extra process
only loads the model and runs one ``--window-seconds`` forward pass: the floor that the model
itself costs.

The backbone is a randomly initialised transformers model saved to a folder and loaded by the
build through the registry's user path (``--backbone FOLDER``), as a downloaded model would be:
``--model base`` is ``Wav2Vec2Model(Wav2Vec2Config())`` (12 layers x 768, about 95 M parameters),
``--model tiny`` a 2-layer x 32 one (same code path, seconds instead of minutes), or
``--backbone NAME`` any registry frontend (e.g. ``logmel``).

Stopping early (``--units K``, default 2): the build extracts only the first K units (pieces of
``--unit-frames`` frames, 8192 = 164 s at 50 Hz) of the recording and stops, leaving a resumable
store. Peak memory is reached within the first pieces when it is bounded (each piece holds the same
amount), and everything that used to grow with the file (decoding the whole file, holding all its
frames) happens before or during the first piece, so this measures it; the full 120 min with the
base model would take about 2 hours of extraction on 2 CPU cores. ``--units 0`` extracts
everything (on a GPU machine: ``python -m benchmarks.memory --model base --units 0 --device cuda``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.workdir import run_child as fresh_process, work_folder
from featurestore.cli import HelpFormatter, parse_spec
from featurestore.options import SpecError, add_config_options, add_options, option, write_config

MODELS = {
    "base": {},  # Wav2Vec2Config() defaults: 12 layers x 768
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
}
SR = 16000


def _minutes(value) -> tuple[float, ...]:
    """``"10,40,120"`` (or a list) -> (10.0, 40.0, 120.0); SpecError naming ``minutes`` otherwise."""
    items = str(value).split(",") if isinstance(value, (str, int, float)) else list(value)
    try:
        minutes = tuple(float(m) for m in items if str(m).strip())
    except (TypeError, ValueError):
        raise SpecError("minutes", f"expects numbers separated by commas, got {value!r}") from None
    if not minutes or any(not m > 0 for m in minutes):
        raise SpecError("minutes", f"must be positive, got {value!r}")
    return minutes


@dataclass(frozen=True)
class MemorySpec:
    """What one run measures (fields = the command's options, ``--config`` keys and keywords): builds
    of one recording of each of ``minutes`` (minutes, as a comma-separated string on the command line),
    each in a fresh process. ``child``, ``input`` and ``store``: set only in that measured process."""

    minutes: tuple[float, ...] = option((10.0, 40.0, 120.0), "recording lengths in minutes, comma-separated")
    model: str = option("base", "random Wav2Vec2 model saved to a folder and loaded as a user's model: base "
                                "(12 x 768) or tiny (2 x 32)", choices=sorted(MODELS))
    backbone: str | None = option(None, "measure this registry frontend or model folder instead of a random "
                                        "--model")
    units: int = option(2, "extract only the first K units (pieces) of each recording, then stop; 0: everything")
    unit_frames: int = option(8192, "--unit-frames of the build (frames per piece)")
    window_seconds: float = option(30.0, "--window-seconds of the build")
    num_workers: int = option(2, "decoding worker processes of the build")
    device: str = option("cpu", "device of the build (cpu, cuda)")
    tolerance: float = option(0.15, "largest allowed (max - min) / min of the builds' peak RSS")
    workdir: str | None = option(None, "folder for the recordings, model and stores (default: a temporary "
                                       "folder, removed at the end; a 120 min recording is 230 MB)", identity=False)
    json: str | None = option(None, "write the results as JSON to this file", metavar="OUT", identity=False)
    child: str | None = option(None, "the measured process: build or model", choices=("build", "model"))
    input: str | None = option(None, "the measured build's input folder")
    store: str | None = option(None, "the measured build's store")

    def __post_init__(self):
        object.__setattr__(self, "minutes", _minutes(self.minutes))
        for name in ("units", "num_workers"):
            if getattr(self, name) < 0:
                raise SpecError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.unit_frames < 1:
            raise SpecError("unit_frames", f"must be >= 1, got {self.unit_frames}")
        if not self.tolerance > 0:
            raise SpecError("tolerance", f"must be > 0, got {self.tolerance}")


#: the options of the measured process only (not shown by --help)
_HIDDEN = {"child": argparse.SUPPRESS, "input": argparse.SUPPRESS, "store": argparse.SUPPRESS}


def parse_args(argv=None) -> MemorySpec:
    """Command-line options (see ``--help``) -> the spec; ``--print-config`` prints it and exits."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory",
        description="Peak RSS of featurestore.build on one long recording of several lengths (default 10, 40 "
                    "and 120 minutes), each build in a fresh process; checks that the peaks agree within "
                    "--tolerance (memory does not grow with the recording's length).",
        formatter_class=HelpFormatter)
    add_options(p, MemorySpec, defaults={"minutes": "10,40,120"}, help=_HIDDEN)
    add_config_options(p)
    return parse_spec(p, MemorySpec, argv)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

def write_recording(path: Path, minutes: float, sr: int = SR, seed: int = 0) -> Path:
    """A mono PCM_16 WAV of ``minutes`` minutes at ``sr`` Hz (noise and a slowly gliding tone), written
    one minute at a time (the generator holds one block, not the file)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n, block = int(round(minutes * 60 * sr)), 60 * sr
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for a in range(0, n, block):
            t = np.arange(a, min(n, a + block)) / sr
            x = 0.3 * np.sin(2 * np.pi * (220 + 40 * np.sin(2 * np.pi * t / 30)) * t) + 0.05 * rng.standard_normal(len(t))
            f.write(x.astype(np.float32))
    return path


def save_model(folder: Path, model: str) -> Path:
    """A randomly initialised ``Wav2Vec2Model`` of size ``model`` (:data:`MODELS`) saved to ``folder``."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    T.Wav2Vec2Model(T.Wav2Vec2Config(**MODELS[model])).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": SR, "do_normalize": False}))
    return folder


# ----------------------------------------------------------------------------------------------
# the measured processes
# ----------------------------------------------------------------------------------------------

def peak_rss() -> dict:
    """Peak RSS in MiB of this process (``VmHWM``) and of its finished children (decoding workers)."""
    own = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    except OSError:
        pass
    if own is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"self_mib": own, "workers_mib": kids}


def child(spec: MemorySpec) -> dict:
    """The measured process: a build (``spec.child == "build"``, of ``spec.input`` into ``spec.store``) or
    loading the model and one forward pass of ``window_seconds`` (``"model"``). Returns its peak RSS
    and what it did."""
    import torch

    import featurestore.build as fb
    from featurestore.frontends import load_frontend
    from featurestore.clips import ClipSettings

    t0 = time.perf_counter()
    out = {}
    if spec.child == "model":
        fe = load_frontend(spec.backbone, device=spec.device)
        fe.to(spec.device).eval()
        x = torch.zeros(1, int(spec.window_seconds * fe.sample_rate))
        x[0].normal_(0, 0.1)
        with torch.inference_mode():
            fe.hidden_states(x.to(spec.device), torch.tensor([x.shape[1]], device=spec.device))
    else:
        if spec.units:  # stop after the first K units: the build extracts only these (rotation off)
            import featurestore.build_extract as fx  # the extraction loop looks its work order up there

            fx._work_order = lambda todo, k=spec.units: list(todo)[:k]
        report = fb.build(spec.input, spec.store, [spec.backbone], name="bench",
                          clip_settings=ClipSettings(segment_s=None, min_segment_s=0.0),
                          extract=fb.ExtractSettings(target_unit_frames=spec.unit_frames,
                                                     window_s=spec.window_seconds),
                          device=spec.device, num_workers=spec.num_workers, progress=False)
        s = report.backbones["bench"]
        out = {"units": s["units"], "units_done": s["units_done"], "audio_seconds": s["audio_seconds"],
               "extract_seconds": s["seconds"]}
    return {**out, **peak_rss(), "seconds": time.perf_counter() - t0}


def run_child(spec: MemorySpec, workdir: Path, kind: str, input: Path | None = None,
              store: Path | None = None) -> dict:
    """Run :func:`child` of ``kind`` (build: of ``input`` into ``store``) in a fresh Python process, given
    its spec as a config file in ``workdir``, and return what it printed (JSON)."""
    spec = replace(spec, child=kind, input=None if input is None else str(input),
                   store=None if store is None else str(store), workdir=None, json=None)
    config = write_config(spec, workdir / f"child-{kind}.yaml", "the spec of a process benchmarks.memory measures")
    return fresh_process("benchmarks.memory", ["--config", config])


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------

def run_memory(spec: MemorySpec) -> dict:
    """Every build of the benchmark in ``spec.workdir`` (None: a temporary folder, removed afterwards)
    -> the results dict (what ``--json`` writes; :func:`format_table` prints it)."""
    with work_folder(spec.workdir, "singfront-memory-") as workdir:
        return run(spec, workdir)


def run(spec: MemorySpec, workdir: Path) -> dict:
    """:func:`run_memory` in ``workdir``."""
    if spec.backbone is None:
        spec = replace(spec, backbone=str(save_model(workdir / f"wav2vec2-{spec.model}-random", spec.model)))
        label = f"random Wav2Vec2 {spec.model} (saved and loaded as a model folder)"
    else:
        label = spec.backbone
    result = {"backbone": label, "unit_frames": spec.unit_frames, "units_per_build": spec.units or "all",
              "window_seconds": spec.window_seconds, "num_workers": spec.num_workers, "device": spec.device,
              "machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_start": list(os.getloadavg())},
              "model_only": run_child(spec, workdir, "model"), "builds": []}
    for minutes in spec.minutes:
        wav = write_recording(workdir / f"rec-{minutes:g}min" / "rec.wav", minutes)
        store = workdir / f"rec-{minutes:g}min.zarr"
        shutil.rmtree(store, ignore_errors=True)
        r = run_child(spec, workdir, "build", input=wav.parent, store=store)
        result["builds"].append({"minutes": minutes, "file_mb": wav.stat().st_size / 1e6, **r})
        shutil.rmtree(store, ignore_errors=True)
        wav.unlink()
    peaks = [b["self_mib"] for b in result["builds"]]
    result["spread"] = (max(peaks) - min(peaks)) / min(peaks)
    result["within_tolerance"] = bool(result["spread"] <= spec.tolerance)
    result["tolerance"] = spec.tolerance
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def format_table(r: dict) -> str:
    m = r["model_only"]
    lines = [f"backbone: {r['backbone']}; units of {r['unit_frames']} frames, {r['units_per_build']} unit(s) per "
             f"build; {r['num_workers']} decoding workers; device {r['device']}",
             f"model only (load + one {r['window_seconds']:g} s forward pass): peak RSS {m['self_mib']:.0f} MiB",
             "", "| recording | WAV | units extracted / planned | audio-s extracted | build peak RSS | "
                 "decoding workers peak | wall s |",
             "|---|---|---|---|---|---|---|"]
    for b in r["builds"]:
        lines.append(f"| {b['minutes']:g} min | {b['file_mb']:.0f} MB | {b['units_done']} / {b['units']} | "
                     f"{b['audio_seconds']:.0f} | {b['self_mib']:.0f} MiB | {b['workers_mib']:.0f} MiB | "
                     f"{b['seconds']:.0f} |")
    lines += ["", f"spread of the build peaks (max - min) / min: {100 * r['spread']:.1f} % "
                  f"({'within' if r['within_tolerance'] else 'NOT within'} {100 * r['tolerance']:.0f} %); "
                  f"load average {r['machine']['loadavg_start'][0]:.1f} -> {r['machine']['loadavg_end'][0]:.1f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    spec = parse_args(argv)
    if spec.child:
        print(json.dumps(child(spec)))
        return 0
    result = run_memory(spec)
    print(format_table(result))
    if spec.json:
        Path(spec.json).write_text(json.dumps(result, indent=2))
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
