"""Runs trained on another machine, brought back into a search folder.

`factory mix search FILE --plan-only` writes a step's task list (`<out>/proxies/runs/tasks.json`,
then `<out>/validate/runs/tasks.json`); `python -m train.suite TASKS` trains it wherever torch is
and writes one `eval.json` per run. `import_results` puts such records back where the search
looks for them, matched to the planned runs by cell and seed, so the next call of the search
reads them as if they had been trained here. A record is a JSON object with `cell`, `seed` and
`scores` (an eval.json); the input is a JSONL file of records or a folder holding eval.json files.
"""

from __future__ import annotations

import json
from pathlib import Path

from factory.core.errors import FactoryError

STEPS = ("proxies", "validate")


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for every record in a JSONL file or under a folder (**/eval.json)."""
    if not path.exists():
        raise FactoryError("results not found", where=str(path), fix="give the JSONL file or folder the task list's runs wrote")
    if path.is_dir():
        items = [(str(f), f.read_text()) for f in sorted(path.rglob("eval.json"))]
    else:
        items = [(f"{path}:{n}", line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    out = []
    for where, text in items:
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise FactoryError(f"not JSON ({e.msg})", where=where, fix="give eval.json records, one JSON object a line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("scores"), dict) or "cell" not in rec or "seed" not in rec:
            raise FactoryError("not a finished run's record (it needs cell, seed and scores)", where=where,
                               field="scores" if isinstance(rec, dict) and "cell" in rec else "cell",
                               fix="give the eval.json records that python -m train.suite wrote")
        out.append((where, rec))
    return out


def _planned(o: Path) -> dict[tuple[str, int], list[Path]]:
    """(cell, seed) -> the eval.json paths this search planned for it, over both steps."""
    got: dict[tuple[str, int], list[Path]] = {}
    for step in STEPS:
        runs = o / step / "runs"
        tf = runs / "tasks.json"
        if tf.exists():
            for t in json.loads(tf.read_text())["tasks"]:
                got.setdefault((t["cell"], int(t["seed"])), []).append(Path(t["eval_json"]))
        for f in runs.glob("cells/*/seed*/eval.json"):  # planned and finished before the last task list
            key = (f.parent.parent.name, int(f.parent.name[4:]))
            if f not in got.get(key, []):
                got.setdefault(key, []).append(f)
    return got


def import_results(o: Path, paths: list[str | Path]) -> int:
    """Write each record of `paths` to its planned run's eval.json (atomically); returns how many
    were new. A record no planned run matches is refused, naming the file and line."""
    if not paths:
        return 0
    planned = _planned(o)
    new = 0
    for p in paths:
        for where, rec in _records(Path(p)):
            hits = planned.get((str(rec["cell"]), int(rec["seed"])), [])
            if len(hits) > 1:  # the same cell in both steps: the record's run folder says which
                hits = [h for h in hits if f"/{h.parents[4].name}/runs/" in str(rec.get("run_dir", ""))] or hits[:1]
            if not hits:
                raise FactoryError(f"run {rec['cell']} seed {rec['seed']} is not a run this search planned", where=where,
                                   fix=f"import the results of the task lists under {o}/*/runs/tasks.json "
                                       "(plan them with --plan-only first)")
            dest = hits[0]
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_text(json.dumps(rec, indent=1))
            tmp.replace(dest)
            new += 1
    return new
