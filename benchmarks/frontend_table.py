"""The frontend comparison as tables in the paper's shape: one row per frontend (and head), the task's
metrics as columns, read back from the pipelines' run folders.

A *cell* is one (task, backbone, head) of the comparison; its run folder is the pipeline's
``WORKDIR/runs/<backbone>-<head>`` with ``metrics.json`` (heads.fit) and ``evaluation.json`` (the
task's evaluate). Columns and where they come from (``evaluation.json``, fractions, shown in %):

============= ============================ ==================================================
task          paper                        columns <- evaluation.json key
============= ============================ ==================================================
singer        Table I (scored per chunk)   F1 (macro) <- segment.macro_f1, Top-2 <- segment.top2,
                                           Top-3 <- segment.top3
transcription Table II (F1, song mean)     COnPOff <- mean.COnPOff.f1, COnP <- mean.COnP.f1,
                                           COn <- mean.COn.f1
technique     Table IV (per 3 s chunk)     F1 (macro) <- macro_f1, Acc <- accuracy, Balanced acc
                                           <- balanced_accuracy, Top-2 <- top2, Top-3 <- top3
============= ============================ ==================================================

Every measured row says the split its scores were measured on and the split that chose the model
(``protocol`` of ``evaluation.json``, else of ``metrics.json``). A cell without scores is shown as
``—`` with a numbered footnote saying why (not built, not fitted, failed, not evaluated).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from heads.runs import read_metrics

from benchmarks import published as P

#: task -> [(column, dotted key into evaluation.json)]; the first column is the task's main metric.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "singer": [("F1 (macro)", "segment.macro_f1"), ("Top-2", "segment.top2"), ("Top-3", "segment.top3")],
    "transcription": [("COnPOff", "mean.COnPOff.f1"), ("COnP", "mean.COnP.f1"), ("COn", "mean.COn.f1")],
    "technique": [("F1 (macro)", "macro_f1"), ("Acc", "accuracy"), ("Balanced acc", "balanced_accuracy"),
                  ("Top-2", "top2"), ("Top-3", "top3")],
}

#: What one score is, per task (printed under each table).
UNITS = {
    "singer": "per segment (the paper's Table I scores per 5 s chunk; this store's segments: see above)",
    "transcription": "note F1 per song (mir_eval defaults), averaged over songs",
    "technique": "per segment (the paper's 3 s chunks; this store's segments: see above)",
}

MISSING = "—"
#: Cell states other than ``ok``, as written in footnotes and the CSV's ``status`` column.
STATES = ("not built", "not in store", "not fitted", "failed", "not evaluated")


def main_metric(task: str) -> str:
    """The column the bar chart shows (the paper's first column)."""
    return COLUMNS[task][0][0]


@dataclass
class Cell:
    """One (task, frontend, head) of the comparison.

    name: the frontend as stored (registry name or model folder name); run: its run folder (may not
    exist); status: ``ok`` or one of :data:`STATES`; message: why, for a missing cell; tags: labels
    such as ``demo corpus`` or ``random-init``."""

    task: str
    name: str
    head: str
    run: Path | None
    status: str = "ok"
    message: str = ""
    tags: list[str] = field(default_factory=list)
    #: With --seeds: every seed's run folder (``run`` is the first); their scores are averaged.
    seed_runs: list[Path] = field(default_factory=list)


def dig(d, dotted: str):
    """``d["a"]["b"]`` for ``"a.b"``; None when any step is missing."""
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run_state(run: Path | None) -> str:
    """``ok`` (evaluated after its last fit), ``not evaluated`` (fitted only, or evaluated before the last
    fit), or ``not fitted`` (no metrics.json)."""
    if run is None or not (Path(run) / "metrics.json").is_file():
        return "not fitted"
    ev = Path(run) / "evaluation.json"
    if not ev.is_file() or ev.stat().st_mtime_ns < (Path(run) / "metrics.json").stat().st_mtime_ns:
        return "not evaluated"
    return "ok"


def measured_row(cell: Cell) -> dict:
    """The table row of one cell: scores in % (None where missing), splits, status and notes."""
    from heads.protocol import selection_label

    row = {"task": cell.task, "frontend": cell.name, "head": cell.head, "source": "measured",
           "status": cell.status, "message": cell.message, "tags": list(cell.tags),
           "run": str(cell.run) if cell.run else "", "scored on": "", "chosen on": ""}
    row.update({col: None for col, _ in COLUMNS[cell.task]})
    runs = cell.seed_runs or [cell.run]
    states = [run_state(r) for r in runs]
    status = cell.status if cell.status != "ok" else next((st for st in states if st != "ok"), "ok")
    row["status"] = status
    evs = [_read_json(Path(r) / "evaluation.json") for r in runs] if cell.run and status == "ok" else []
    ev = evs[0] if evs else None
    fit = read_metrics(cell.run) if cell.run else None
    protocol = (ev or {}).get("protocol") or (fit or {}).get("protocol")
    if protocol:
        row["scored on"], row["chosen on"] = protocol["scored_split"], selection_label(protocol, fit)
    row["seeds"] = [int((e or {}).get("seed", 0) or 0) for e in evs] if evs else []
    if status == "ok":
        from heads.intervals import mean_sd

        for col, key in COLUMNS[cell.task]:
            values = [dig(e, key) for e in evs]
            if any(v is None for v in values):
                continue
            mean, sd = mean_sd([100.0 * float(v) for v in values])
            row[col] = mean
            if len(values) > 1:
                row[f"{col} sd"] = sd
            ci = (ev.get("ci95") or {}).get(key)
            if len(values) == 1 and ci:
                row[f"{col} ci"] = [100.0 * float(ci[0]), 100.0 * float(ci[1])]
        row["n"], row["items"] = scored_items(ev)
        row["chance"] = chance_level(cell.task, ev)
        absent = [col for col, key in COLUMNS[cell.task] if dig(ev, key) is None]
        if absent:
            row["message"] = (f"{', '.join(absent)} not in {Path(cell.run) / 'evaluation.json'} (top-k needs "
                              "more than k classes in the run)")
    elif not row["message"]:
        row["message"] = {"not fitted": f"no fitted run in {cell.run}",
                          "not evaluated": f"{cell.run} is fitted but not evaluated since its last fit"
                          }.get(status, status)
    return row


def scored_items(ev: dict) -> tuple[int | None, str]:
    """(how many items the main metric was scored on, what they are) from an evaluation.json."""
    if "n_songs" in ev:
        return ev["n_songs"], "songs"
    if isinstance(ev.get("segment"), dict):
        return ev["segment"].get("n"), "segments"
    return ev.get("n"), "clips"


def chance_level(task: str, ev: dict) -> float | None:
    """The main metric of a uniform random guess, in %: macro F1 and accuracy 100/C for C classes
    (``class_names`` of the evaluation); None for transcription (no simple chance level)."""
    level = ev.get("segment") if isinstance(ev.get("segment"), dict) else ev
    names = level.get("class_names") if task != "transcription" else None
    return 100.0 / len(names) if names else None


def format_value(row: dict, col: str) -> str:
    """``64.3 [52.1, 75.0]`` (one run: bootstrap 95 % interval) or ``64.3 ± 2.1`` (seeds: sample sd)."""
    v = row[col]
    if row.get(f"{col} sd") is not None:
        return f"{v:.1f} ± {row[f'{col} sd']:.1f}"
    ci = row.get(f"{col} ci")
    return f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def published_rows(task: str) -> list[dict]:
    """The paper's rows for ``task`` (:mod:`benchmarks.published`), shaped like measured rows."""
    table, _ = P.TABLES[task]
    scored, chosen = P.SPLITS[task]
    rows = []
    for model, registry, values in P.PUBLISHED[task]:
        rows.append({"task": task, "frontend": model, "head": "paper", "source": "published", "status": "ok",
                     "message": "", "tags": [f"published: {P.CITATION}, {table}"], "run": "",
                     "registry": registry, "scored on": scored, "chosen on": chosen,
                     **{col: values.get(col) for col, _ in COLUMNS[task]}})
    return rows


def table_rows(task: str, cells: list[Cell], published: bool = False) -> list[dict]:
    """Measured rows in the order of ``cells``; with ``published``, each paper row right after the
    measured rows of the same checkpoint, the others at the end."""
    rows = [measured_row(c) for c in cells]
    if not published:
        return rows
    pub = published_rows(task)
    out, used = [], set()
    for i, r in enumerate(rows):
        out.append(r)
        last_of_frontend = i + 1 == len(rows) or rows[i + 1]["frontend"] != r["frontend"]
        for j, p in enumerate(pub):
            if last_of_frontend and j not in used and p["registry"] == r["frontend"]:
                out.append(p)
                used.add(j)
    return out + [p for j, p in enumerate(pub) if j not in used]


def _label(row: dict) -> str:
    extra = [t for t in row["tags"] if t == "random-init"]
    return row["frontend"] + (f" ({', '.join(extra)})" if extra else "") + (
        " [published]" if row["source"] == "published" else "")


def to_markdown(task: str, rows: list[dict], data_note: str = "") -> str:
    """The task's table: ``| frontend | head | <metrics> | scored on | chosen on | notes |`` with ``—``
    and a numbered footnote for every cell without scores."""
    cols = [c for c, _ in COLUMNS[task]]
    table, what = P.TABLES[task]
    lines = [f"# {task}: frontends compared in the shape of {table} of {P.CITATION}", ""]
    if data_note:
        lines += [data_note, ""]
    lines += ["| frontend | head | " + " | ".join(cols) + " | scored on | chosen on | notes |",
              "|---|---|" + "---:|" * len(cols) + "---|---|---|"]
    notes: list[str] = []

    def footnote(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    for r in rows:
        cells = []
        for k, c in enumerate(cols):
            v = r[c]
            if v is not None:
                cells.append(format_value(r, c))
            elif r["status"] != "ok":
                why = f"{_label(r)} / {r['head']}: {r['status']}: {r['message']}"
                cells.append(MISSING + (f" {footnote(why)}" if k == 0 else ""))
            else:
                cells.append(f"n/a {footnote(r['message'])}")
        tags = [t for t in r["tags"] if t != "random-init" or r["source"] == "published"]
        if len(r.get("seeds") or []) > 1:
            tags.append("seeds " + ",".join(map(str, r["seeds"])))
        lines.append("| " + " | ".join([_label(r), r["head"]] + cells +
                                       [r["scored on"] or MISSING, r["chosen on"] or MISSING, "; ".join(tags)]) + " |")
    lines += ["", f"Scores in %: measured {UNITS[task]}; [bootstrap 95 % interval over the scored items] for one "
                  "run, mean ± sample sd over seeds for several (--seeds); \"scored on\" is the split the scores "
                  "were measured on, \"chosen on\" the clips that chose the learning rate and the stopping epoch. "
                  f"Published rows: {P.CITATION}, {table} ({what}); not comparable with demo-corpus rows."]
    if notes:
        lines += [""] + [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    return "\n".join(lines)


CSV_FIELDS = ["task", "frontend", "head", "source", "status", "scored on", "chosen on", "n", "seeds", "notes",
              "message", "run"]
#: Per metric column of the CSV, besides the value: the bootstrap interval of one run, the sd over seeds.
CSV_EXTRA = ("ci low", "ci high", "sd")


def write_csv(task: str, rows: list[dict], path: Path) -> Path:
    """One line per row; metric columns in % with full precision, empty where missing."""
    cols = [c for c, _ in COLUMNS[task]]
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        extra = [f"{c} {e}" for c in cols for e in CSV_EXTRA]
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS[:3] + cols + CSV_FIELDS[3:] + extra, lineterminator="\n")
        w.writeheader()
        num = lambda v: "" if v is None else repr(float(v))  # noqa: E731
        for r in rows:
            ci = {c: r.get(f"{c} ci") or [None, None] for c in cols}
            w.writerow({**{k: r.get(k, "") for k in CSV_FIELDS if k not in ("notes", "seeds", "n")},
                        "notes": "; ".join(r["tags"]), "seeds": ",".join(map(str, r.get("seeds") or [])),
                        "n": "" if r.get("n") is None else f"{r['n']} {r.get('items', '')}".strip(),
                        **{c: num(r[c]) for c in cols},
                        **{f"{c} ci low": num(ci[c][0]) for c in cols}, **{f"{c} ci high": num(ci[c][1]) for c in cols},
                        **{f"{c} sd": num(r.get(f"{c} sd")) for c in cols}})
    return path


def read_csv(path: Path) -> list[dict]:
    """Rows of :func:`write_csv` back (metrics as floats or None)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c, _ in COLUMNS.get(r["task"], []):
            for k in [c] + [f"{c} {e}" for e in CSV_EXTRA]:
                if k in r:
                    r[k] = float(r[k]) if r[k] != "" else None
    return rows
