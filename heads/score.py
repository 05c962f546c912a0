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

from heads.metrics import TRANSCRIPTION_KEYS, transcription_scores
from heads.notes import read_notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m heads.score",
        description="Note-level transcription scores (COnPOff, COnP, COn) of EST against REF, as JSON. "
                    "Files: one note per line, 'onset offset Hz' (seconds, seconds, Hz), tabs or spaces, "
                    "'#' comments. Scoring: mir_eval.transcription.evaluate defaults (onset 50 ms, "
                    "pitch 50 cents, offset max(50 ms, 0.2 x duration)).")
    p.add_argument("ref", metavar="REF", help="reference notes file")
    p.add_argument("est", metavar="EST", help="estimated notes file")
    p.add_argument("--indent", type=int, default=None, help="JSON indent (default: one line)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ref_i, ref_p = read_notes(args.ref)
        est_i, est_p = read_notes(args.est)
    except FileNotFoundError as e:
        print(f"heads.score: error: no such file: {e.filename}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, ValueError) as e:
        msg = " ".join(str(e).split())
        print(f"heads.score: error: {msg}", file=sys.stderr)
        return 2
    try:
        scores = transcription_scores(ref_i, ref_p, est_i, est_p)
    except ValueError as e:  # mir_eval's validation: non-positive durations or frequencies
        msg = " ".join(str(e).split())
        print(f"heads.score: error: invalid notes in {args.ref} or {args.est}: {msg}", file=sys.stderr)
        return 2
    out = {name: scores[name] for name in TRANSCRIPTION_KEYS}
    print(json.dumps(out, indent=args.indent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
