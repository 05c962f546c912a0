"""The results table of a folder of run folders: one JSON line per finished run, appended, never rewritten.

Every ``heads.fit`` run and every ``pipelines.<task> evaluate`` appends one row to ``results.jsonl``
in the folder that holds its run folder (``runs/`` for ``heads.fit``'s default, ``WORKDIR/runs/`` for
the pipelines). A row::

    {"time": ISO 8601 UTC, "command": "heads.fit" | "evaluate", "task", "backbone", "head",
     "options": {name: value} (what makes the run: layers, pool, context, grids, ...), "seed": int,
     "scored_split", "chosen_on", "n_scored": items scored (clips or songs), "items": "clips" | "songs",
     "metrics": {name: fraction}, "ci95": {name: [low, high]}, "run": run folder name}

Rows are only ever appended (``O_APPEND``, one ``write`` per row), so runs of several processes add up
and no run removes another's row. A run done again appends a new row; :func:`latest` keeps the last
row per (command, run folder). :func:`seed_groups` gathers the runs that differ only in their seed,
and :func:`to_markdown` renders mean ± sd over seeds (sample sd) and each run's bootstrap 95 % interval
(:mod:`heads.intervals`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from heads.intervals import mean_sd

FILE = "results.jsonl"


def append_result(folder, row: dict) -> Path:
    """Append ``row`` (JSON-ready; ``time`` added) to ``folder/results.jsonl`` -> its path."""
    path = Path(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **row}
    line = (json.dumps(row, default=float, sort_keys=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def read_results(folder) -> list[dict]:
    """Every row of ``folder/results.jsonl`` in order ([] when there is none). A line that is not a JSON
    object raises ValueError naming the file and line, except a cut last line (a writer killed mid-row),
    which is skipped."""
    path = Path(folder) / FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if i == len(lines) - 1:  # no newline after it: cut while written
                continue
            raise ValueError(f"{path}:{i + 1}: not a results row ({e})") from None
        rows.append(row)
    return rows


def latest(rows: list[dict], command: str | None = None) -> list[dict]:
    """The last row of each (command, run folder), in the order of their first appearance; only
    ``command``'s rows when given."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if command is None or r.get("command") == command:
            key = (r.get("command"), r.get("run"))
            out[key] = r  # a later row replaces the value, not the position
    return list(out.values())


def config_key(row: dict) -> tuple:
    """What a run is, its seed aside: (command, task, backbone, head, options as sorted JSON, splits)."""
    return (row.get("command"), row.get("task"), row.get("backbone"), row.get("head"),
            json.dumps(row.get("options") or {}, sort_keys=True), row.get("scored_split"), row.get("chosen_on"))


def seed_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows gathered by :func:`config_key` (runs that differ only in their seed), sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(config_key(r), []).append(r)
    return [sorted(g, key=lambda r: r.get("seed", 0)) for g in groups.values()]


def summarize(group: list[dict], key: str) -> dict:
    """``{"values": per-seed values, "mean", "sd", "ci95": [low, high] of a single run or None}``."""
    values = [(r.get("metrics") or {}).get(key) for r in group]
    mean, sd = mean_sd(values)
    ci = (group[0].get("ci95") or {}).get(key) if len(group) == 1 else None
    return {"values": values, "mean": mean, "sd": sd, "ci95": ci}


def _pct(v) -> str:
    return "" if v is None or v != v else f"{100 * v:.1f}"


def format_score(s: dict) -> str:
    """``65.0 [45.0, 85.0]`` for one run (its bootstrap interval), ``65.0 ± 3.2`` over seeds (sample sd)."""
    if s["mean"] != s["mean"]:
        return "—"
    if len(s["values"]) > 1:
        return f"{_pct(s['mean'])} ± {_pct(s['sd'])}"
    ci = s["ci95"]
    return _pct(s["mean"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci and ci[0] == ci[0] else "")


def _options(row: dict) -> str:
    opts = row.get("options") or {}
    return ", ".join(f"{k}={v}" for k, v in opts.items() if v not in (None, "", False)) or "—"


def to_markdown(rows: list[dict], metrics: list[tuple[str, str]], title: str) -> str:
    """The table of a results log: one line per configuration (seeds gathered), then one per run.

    metrics: [(column, key in a row's ``metrics``)]."""
    groups = seed_groups(latest(rows))
    cols = [c for c, _ in metrics]
    lines = [f"# {title}", "",
             "| task | backbone | head | options | seeds | scored on | chosen on | n | " + " | ".join(cols) + " |",
             "|---" * (8 + len(cols)) + "|"]
    for g in groups:
        r = g[0]
        seeds = ",".join(str(x.get("seed", 0)) for x in g)
        n = f"{r.get('n_scored', '?')} {r.get('items', '')}".strip()
        cells = [format_score(summarize(g, k)) for _, k in metrics]
        lines.append("| " + " | ".join([str(r.get("task")), str(r.get("backbone")), str(r.get("head")), _options(r),
                                        seeds, str(r.get("scored_split")), str(r.get("chosen_on")), n] + cells) + " |")
    lines += ["", "Scores in %. One seed: the score and its bootstrap 95 % interval over the scored items "
                  "(1000 resamples). Several seeds: mean ± sample sd over the seeds' scores (their runs below).",
              "", "| run | seed | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g in groups:
        for r in g:
            cells = [format_score(summarize([r], k)) for _, k in metrics]
            lines.append("| " + " | ".join([str(r.get("run")), str(r.get("seed", 0))] + cells) + " |")
    return "\n".join(lines)
