"""Singing technique classification on VocalSet (Table IV of Yamamoto, APSIPA 2023).

    python -m pipelines.technique prepare --workdir W --raw /data/VocalSet      # or --demo
    python -m pipelines.technique build --workdir W --backbone wavlm
    python -m pipelines.technique fit --workdir W --backbone wavlm              # linear head, w_c = 1/n_c^0.2
    python -m pipelines.technique evaluate --workdir W --backbone wavlm

Dataset layout: ``FULL/<singer>/<context>/<technique>/<file>.wav`` (``--raw`` is the folder holding
``FULL``, or ``FULL`` itself). Ten techniques are kept (REFERENCES section 3): belt, breathy, inhaled,
lip_trill, spoken, straight, trill, trillo, vibrato, vocal_fry. Technique folder names are
normalised (lower case, spaces and hyphens -> ``_``) and then mapped with :data:`TECHNIQUE_ALIASES`:

    ============================  ==========
    folder (normalised)           technique
    ============================  ==========
    belt, belted                  belt
    breathy                       breathy
    inhaled, inhale               inhaled
    lip_trill, liptrill, lip_trills  lip_trill
    spoken, speech                spoken
    straight                      straight
    trill, trills                 trill
    trillo                        trillo
    vibrato, vibrado              vibrato
    vocal_fry, vocalfry, fry      vocal_fry
    ============================  ==========

Any other technique folder (VocalSet also has e.g. fast_forte, slow_piano, messa_di_voce, pp) is
reported once in ``prepare_report.json`` as ``other_technique`` and its files are not used; this is
not an error. Audio files at another depth (``bad_layout``), empty files (``empty``) and non-audio
files (``not_audio``) are reported and skipped too.

Split: the official singer split, 15 training and 5 test singers. The paper does not name its test
singers in the material we have. The VocalSet archive ships the authors' list beside ``FULL``
(``test_singers_technique.txt``): when it is there, it is used. Otherwise the default is the list as
we know it, ``female2, female8, male3, male5, male10`` (:data:`DEFAULT_TEST_SINGERS`; three public
code bases that read the archive's file agree on it; ``male7``, sometimes quoted, is not in it).
Either is overridden by ``prepare --test-singers f2,f8,m3,...`` (``f<N>``/``m<N>`` abbreviate
``female<N>``/``male<N>``).
Validation (early stopping and the learning-rate choice) takes 2 of the training singers, by default
the last female and the last male one in natural order (``female9`` and ``male11`` on VocalSet),
configurable with ``--valid-singers``; so no singer is in two splits.

Store settings (Table IV): leading/trailing silence trimmed at ``--trim-db`` (default -40 dBFS),
3 s segments (``--segment-seconds``), a last shorter segment kept if >= 1 s. The demo (``prepare
--demo`` writes ``WORKDIR/demo.flag``) uses 1 s segments and trims at -50 dBFS: its clips are 5 s long.

Evaluation: clip-level (per 3 s segment) accuracy, balanced accuracy, macro F1, top-2 and top-3
accuracy on the test singers (the validation ones when there is no test split), a confusion matrix
(``evaluation.json`` and ``confusion_technique.png`` in the run folder). The head is trained with the
paper's class weights w_c = 1 / n_c^0.2 (``--class-weight paper``, the default here).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from dataclasses import dataclass

from featurestore.clips import ClipSettings
from featurestore.manifest import AUDIO_SUFFIXES, Skip
from featurestore.options import SpecError, option
from pipelines.command import main
from pipelines.runner import DEMO_FLAG, PrepareResult, TaskSpec, run_backbone, run_label, run_plan, run_pool  # noqa: F401

#: The ten techniques of Table IV, sorted.
TECHNIQUES = ("belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo", "vibrato",
              "vocal_fry")

#: Normalised folder name -> technique (see the module docstring).
TECHNIQUE_ALIASES = {
    "belt": "belt", "belted": "belt",
    "breathy": "breathy",
    "inhaled": "inhaled", "inhale": "inhaled",
    "lip_trill": "lip_trill", "liptrill": "lip_trill", "lip_trills": "lip_trill",
    "spoken": "spoken", "speech": "spoken",
    "straight": "straight",
    "trill": "trill", "trills": "trill",
    "trillo": "trillo",
    "vibrato": "vibrato", "vibrado": "vibrato",
    "vocal_fry": "vocal_fry", "vocalfry": "vocal_fry", "fry": "vocal_fry",
}

#: Test singers of the official split (as far as we know them; see the module docstring).
DEFAULT_TEST_SINGERS = ("female2", "female8", "male3", "male5", "male10")
#: The authors' split file in the VocalSet archive (beside FULL).
TEST_SINGERS_FILE = "test_singers_technique.txt"
#: Validation singers taken out of the training singers by default.
N_VALID_SINGERS = 2

SEGMENT_S, MIN_SEGMENT_S, TRIM_DB = 3.0, 1.0, -40.0
DEMO_SEGMENT_S, DEMO_TRIM_DB = 1.0, -50.0


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
def normalise_name(name: str) -> str:
    """Lower case, spaces and hyphens -> ``_``, repeated ``_`` collapsed."""
    return re.sub(r"_+", "_", re.sub(r"[\s\-]+", "_", name.strip().lower())).strip("_")


def map_technique(folder: str) -> str | None:
    """A VocalSet technique folder name -> one of :data:`TECHNIQUES`, or None if not one of them."""
    return TECHNIQUE_ALIASES.get(normalise_name(folder))


def expand_singer(name: str) -> str:
    """``f2`` -> ``female2``, ``M11`` -> ``male11``; other names lower-cased as given."""
    n = name.strip().lower()
    m = re.fullmatch(r"([fm])(\d+)", n)
    if m:
        return ("female" if m.group(1) == "f" else "male") + m.group(2)
    return n


def parse_singers(value) -> list[str] | None:
    """``"f2,female8 m3"`` -> ['female2', 'female8', 'male3']; None/"" -> None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ",".join(value)
    names = [expand_singer(v) for v in re.split(r"[,\s]+", str(value)) if v.strip()]
    return names or None


def read_singer_file(path: Path) -> list[str]:
    """Singer names (``female<N>``/``male<N>``, any separator, RTF markup tolerated) in a split file."""
    text = Path(path).read_text(encoding="utf-8", errors="replace").lower()
    return list(dict.fromkeys(re.findall(r"\b(?:fe)?male\d+\b", text)))


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def default_valid_singers(train_singers, n: int = N_VALID_SINGERS) -> list[str]:
    """Validation singers out of the training ones: the last female and the last male singer (natural
    order) when names start with female/male, else the last ``n``; always leaves one for training."""
    train = sorted(set(train_singers), key=_natural_key)
    n = min(n, max(0, len(train) - 1))
    if n == 0:
        return []
    picked = []
    for prefix in ("female", "male"):
        group = [s for s in train if re.fullmatch(rf"{prefix}\d+", s)]
        if group and len(picked) < n:
            picked.append(group[-1])
    for s in reversed(train):
        if len(picked) >= n:
            break
        if s not in picked:
            picked.append(s)
    return sorted(picked, key=_natural_key)


# ---------------------------------------------------------------------------------------------
# adapter
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TechniqueOptions:
    """The technique pipeline's own settings (each shown by the sub-commands named in ``commands``)."""

    test_singers: str | None = option(None, "comma-separated test singers (f2 = female2); not given: the archive's "
                                            f"{TEST_SINGERS_FILE}, else " + ",".join(DEFAULT_TEST_SINGERS),
                                      commands=("prepare",))
    valid_singers: str | None = option(None, "comma-separated validation singers out of the training ones; not "
                                             "given: the last female and last male training singer",
                                       commands=("prepare",))
    trim_db: float | None = option(None, f"trim silence below this dBFS (not given: {TRIM_DB}, demo {DEMO_TRIM_DB})",
                                   commands=("build",))
    segment_seconds: float | None = option(None, f"segment length (not given: {SEGMENT_S}, demo {DEMO_SEGMENT_S}; "
                                                 "0: whole files)", commands=("build",))


def _skip(where: str, reason: str, message: str) -> dict:
    return Skip(where, reason, message).as_dict()


def find_full(raw: Path) -> Path:
    """The ``FULL`` folder: ``raw/FULL`` if it exists, else ``raw`` itself."""
    raw = Path(raw)
    for name in ("FULL", "full"):
        if (raw / name).is_dir():
            return raw / name
    return raw


def prepare_vocalset(raw: Path, opts: TechniqueOptions) -> PrepareResult:
    """Rows ``{path, id, split, technique, singer, context}`` of a VocalSet folder (see the module
    docstring for the layout, the technique mapping and the split). ``opts`` may carry
    ``test_singers`` / ``valid_singers`` (comma-separated names, ``f2``-style abbreviations allowed);
    without ``test_singers``, the archive's ``test_singers_technique.txt`` (in ``raw`` or beside
    ``FULL``) or else :data:`DEFAULT_TEST_SINGERS`."""
    full = find_full(Path(raw))
    skipped: list[dict] = []
    found: list[tuple[str, str, str, Path]] = []  # singer, context, technique, path
    other: dict[str, int] = {}
    for p in sorted(full.rglob("*")):
        if not p.is_file() or any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(full).parts):
            continue  # hidden files, macOS resource forks
        rel = p.relative_to(full)
        where = rel.as_posix()
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            skipped.append(_skip(where, "not_audio", f"{where}: not an audio file ({', '.join(AUDIO_SUFFIXES)})"))
            continue
        if len(rel.parts) != 4:
            skipped.append(_skip(where, "bad_layout", f"{where}: expected <singer>/<context>/<technique>/<file>, "
                                                      f"found at depth {len(rel.parts)}"))
            continue
        singer, context, folder = (normalise_name(rel.parts[0]), normalise_name(rel.parts[1]), rel.parts[2])
        technique = map_technique(folder)
        if technique is None:
            key = f"{rel.parts[0]}/{rel.parts[1]}/{folder}"
            other[key] = other.get(key, 0) + 1
            continue
        if p.stat().st_size == 0:
            skipped.append(_skip(where, "empty", f"{where}: empty file (0 bytes)"))
            continue
        found.append((singer, context, technique, p))
    for key, n in sorted(other.items()):
        skipped.append(_skip(key, "other_technique",
                             f"{key}: technique folder {key.rsplit('/', 1)[-1]!r} is not one of the 10 techniques "
                             f"({n} file{'s' if n != 1 else ''} not used)"))

    singers = sorted({s for s, *_ in found}, key=_natural_key)
    test, source = parse_singers(opts.test_singers), "--test-singers"
    if test is None:
        files = [f for f in (Path(raw) / TEST_SINGERS_FILE, full.parent / TEST_SINGERS_FILE) if f.is_file()]
        test = read_singer_file(files[0]) if files else None
        source = str(files[0]) if test else "default"
    test = test or list(DEFAULT_TEST_SINGERS)
    for s in test:
        if s not in singers:
            skipped.append(_skip("--test-singers", "singer_not_found",
                                 f"test singer {s!r} has no usable file (singers found: {', '.join(singers)})"))
    train_pool = [s for s in singers if s not in test]
    valid = parse_singers(opts.valid_singers)
    if valid is None:
        valid = default_valid_singers(train_pool)
    else:
        clash = sorted(set(valid) & set(test))
        if clash:
            raise SpecError("valid_singers", f"{', '.join(clash)} also in test_singers: a singer can be in one "
                             "split only")
        for s in valid:
            if s not in singers:
                skipped.append(_skip("--valid-singers", "singer_not_found",
                                     f"validation singer {s!r} has no usable file"))

    print(f"test singers ({source}): {', '.join(test)}; validation singers: {', '.join(valid) or 'none'}")

    def split_of(singer: str) -> str:
        return "test" if singer in test else "valid" if singer in valid else "train"

    rows = []
    for singer, context, technique, p in found:
        rel = p.relative_to(full).with_suffix("").as_posix()
        rows.append({"path": str(p.resolve()), "id": rel, "split": split_of(singer), "technique": technique,
                     "singer": singer, "context": context})
    return PrepareResult(rows, skipped)


def prepare_demo(manifest: Path, opts: TechniqueOptions) -> PrepareResult:
    """Rows of the built-in demo corpus: its technique labels (straight / vibrato / breathy) and its
    per-singer splits. Writes ``WORKDIR/demo.flag`` so the build uses the demo settings."""
    manifest = Path(manifest)
    records = json.loads(manifest.read_text())
    rows, skipped = [], []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not r.get("path") or not r.get("technique"):
            skipped.append(_skip(f"{manifest.name} record {i}", "bad_row", f"record {i}: no path or technique"))
            continue
        rows.append({"path": str((manifest.parent / r["path"]).resolve()), "id": r.get("id") or Path(r["path"]).stem,
                     "split": r.get("split", ""), "technique": r["technique"], "singer": r.get("singer", "")})
    return PrepareResult(rows, skipped)


# ---------------------------------------------------------------------------------------------
# store settings, evaluation
# ---------------------------------------------------------------------------------------------
def clip_settings(opts: TechniqueOptions, demo: bool) -> ClipSettings:
    """Trimmed (-40 dBFS), 3 s segments, last segment kept if >= 1 s; demo: 1 s segments, -50 dBFS."""
    seg, trim = opts.segment_seconds, opts.trim_db
    seg = (DEMO_SEGMENT_S if demo else SEGMENT_S) if seg is None else seg
    trim = (DEMO_TRIM_DB if demo else TRIM_DB) if trim is None else trim
    return ClipSettings(segment_s=seg or None, min_segment_s=MIN_SEGMENT_S, trim_db=trim)


def evaluate(store, run_dir: Path, opts: TechniqueOptions, score_split: str | None = None) -> dict:
    """Clip-level scores of the fitted head on the run's scored split (``score_split`` to change it;
    the split that chose the model is refused). Unlabelled clips are left out and counted."""
    from heads import metrics
    from heads.evaluation import score_clip_head
    from heads.persist import load_head
    from heads.tasks import pooled_features

    head = load_head(Path(run_dir) / "head.json")
    bb = store.backbone_name(run_backbone(run_dir, Path(run_dir).name))
    plan = run_plan(store, run_dir, SPEC, bb, score_split)
    rows = plan.score
    classes = [str(c) for c in head.classes_]
    X = pooled_features(store, bb, rows, run_pool(run_dir))  # the features the run was fitted on
    from heads.intervals import classification_intervals

    scores = score_clip_head(head, X, store.labels("technique")[rows])
    report = scores.report
    # intervals: clips resampled file by file (the segments of one recording move together)
    files = np.asarray(store.clips["file_id"]).astype(str)[rows][scores.known]
    report["ci95"] = classification_intervals(scores.y, scores.proba, groups=files)
    metrics.plot_confusion(np.array(report["confusion"]), classes, Path(run_dir) / "confusion_technique.png",
                           title=f"{bb} / {head_name(run_dir)} / technique\n{run_label(plan, run_dir)}")
    report.update(split=plan.score_split, protocol=plan.describe(), n_clips=int(len(rows)))
    if getattr(head, "layer_weights_", None) is not None:
        report["layer_weights"] = [float(v) for v in np.asarray(head.layer_weights_)]
    return report


def describe_evaluation(result: dict, run_dir: Path) -> str:
    """What ``evaluate`` prints of a run: its protocol."""
    from heads.protocol import protocol_label
    from heads.runs import read_metrics

    return f"technique, {protocol_label(result['protocol'], read_metrics(run_dir))}"


def head_name(run_dir: Path) -> str:
    """The head a run was fitted with (its metrics.json), or ``?``."""
    from heads.runs import read_metrics

    return (read_metrics(run_dir) or {}).get("head") or "?"


SPEC = TaskSpec(
    name="technique",
    description="singing technique classification (VocalSet, 10 techniques, singer split)",
    heads_task="technique",
    default_head="linear",
    prepare=prepare_vocalset,
    prepare_demo=prepare_demo,
    clip_settings=clip_settings,
    evaluate=evaluate,
    summary_keys=["accuracy", "balanced_accuracy", "macro_f1", "top2", "top3"],
    options=TechniqueOptions,
    describe=describe_evaluation,
    default_class_weight="paper",
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
