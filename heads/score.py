"""Score an estimated notes file against a reference notes file.

    python -m heads.score REF EST [--indent N]

prints ``{"COnPOff": {"precision", "recall", "f1"}, "COnP": {...}, "COn": {...}}`` as JSON
(mir_eval.transcription.evaluate defaults). Exit code 2 with a one-line error for a missing,
unreadable or malformed file.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from featurestore.cli import add_field
from featurestore.options import SpecError, add_options, from_namespace, option
from heads.metrics import TRANSCRIPTION_KEYS, transcription_scores
from heads.notes import read_notes


@dataclass(frozen=True)
class ScoreSpec:
    """The two notes files to compare (paths) and the JSON indent of the printed scores."""

    ref: str | None = option(None, "reference notes file", metavar="REF")
    est: str | None = option(None, "estimated notes file", metavar="EST")
    indent: int | None = option(None, "JSON indent (default: one line)")

    def __post_init__(self):
        for name in ("ref", "est"):
            if not getattr(self, name):
                raise SpecError(name, "give a notes file")
        if self.indent is not None and self.indent < 0:
            raise SpecError("indent", f"must be >= 0, got {self.indent}")


class ScoreError(ValueError):
    """A notes file is missing, unreadable or malformed (the message names it)."""


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def score_files(spec: ScoreSpec) -> dict:
    """``{"COnPOff": {"precision", "recall", "f1"}, "COnP": {...}, "COn": {...}}`` of ``spec.est``
    against ``spec.ref`` (mir_eval defaults). Raises ScoreError naming the file for a missing,
    unreadable or malformed file, or notes mir_eval refuses."""
    try:
        ref_i, ref_p = read_notes(spec.ref)
        est_i, est_p = read_notes(spec.est)
    except FileNotFoundError as e:
        raise ScoreError(f"no such file: {e.filename}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ScoreError(_one_line(e)) from None
    try:
        scores = transcription_scores(ref_i, ref_p, est_i, est_p)
    except ValueError as e:  # mir_eval's validation: non-positive durations or frequencies
        raise ScoreError(f"invalid notes in {spec.ref} or {spec.est}: {_one_line(e)}") from None
    return {name: scores[name] for name in TRANSCRIPTION_KEYS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m heads.score",
        description="Note-level transcription scores (COnPOff, COnP, COn) of EST against REF, as JSON. "
                    "Files: one note per line, 'onset offset Hz' (seconds, seconds, Hz), tabs or spaces, "
                    "'#' comments. Scoring: mir_eval.transcription.evaluate defaults (onset 50 ms, "
                    "pitch 50 cents, offset max(50 ms, 0.2 x duration)).")
    add_field(p, ScoreSpec, "ref", positional=True)
    add_field(p, ScoreSpec, "est", positional=True)
    add_options(p, ScoreSpec, skip=("ref", "est"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = from_namespace(ScoreSpec, args)
        out = score_files(spec)
    except SpecError as e:
        print(f"heads.score: error: {e.as_flag()}", file=sys.stderr)
        return 2
    except ScoreError as e:
        print(f"heads.score: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=spec.indent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
