"""`factory mix search`: proxy runs -> a fitted regression -> the best feasible mix, optionally validated.

Folder `<out>`: `search.json` (the config hash and the proxy design), `scores.jsonl` (one line per
finished proxy: its shares and target score), `proxies/` (the ablation grid of the proxy runs and
its cells), `report.{json,md}`, `fit.png`, `<name>.yaml` (the proposal; a copy goes next to the
base mix), and with `--validate` `validate/` (the proposal and the baselines at the larger scale).
A rerun skips every proxy already scored, and the ablation runner skips every run already trained.
With `plan_only` each step stops at its task list (`proxies/runs/tasks.json`, then
`validate/runs/tasks.json`) for `python -m train.suite`; `results` brings such runs back (transfer).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from factory.ablate.search import design, fit
from factory.ablate.search.spec import Scale, SearchConfig, load
from factory.core.config import config_hash, read_yaml
from factory.core.errors import FactoryError
from factory.core.merge import deep_merge

Objective = Callable[[list[dict[str, float]], Path], Iterator[tuple[int, float]]]


class Region:
    """The varied sources' feasible shares at a token budget (see `design`)."""

    def __init__(self, cfg: SearchConfig, base: dict, where: str, unique: dict[str, int], tokens: int):
        srcs = {s["name"]: s for s in base.get("sources", [])}
        missing = [n for n in cfg.vary if n not in srcs]
        if missing:
            raise FactoryError(f"{', '.join(missing)} not a source of the base mix", where=where, field="vary",
                               fix=f"vary some of {sorted(srcs)}")
        self.names = list(cfg.vary)
        self.mass = 1.0 - sum(float(s.get("share", 0)) for n, s in srcs.items() if n not in cfg.vary)
        L = int(base.get("seq_len", 256))
        self.lo = np.array([cfg.vary[n].min for n in self.names])
        hi, self.max_epochs = [], {}
        for n in self.names:
            ep = cfg.vary[n].max_epochs if cfg.vary[n].max_epochs is not None else srcs[n].get("max_epochs")
            self.max_epochs[n] = ep
            cap = 1.0 if ep is None else ep * max(0, (unique[n] - 1) // L) * L / tokens
            hi.append(min(cfg.vary[n].max, cap))
        self.hi = np.array(hi)
        design.check(self.lo, self.hi, self.mass, self.names, where, f"at {tokens:,} tokens, with max_epochs")

    def shares(self, w: np.ndarray) -> dict[str, float]:
        """Shares rounded to 4 places, the rounding put on the largest so that they still fill `mass`."""
        r = np.round(w, 4)
        i = int(np.argmax(r))
        r[i] = round(float(r[i] + round(self.mass, 4) - r.sum()), 4)
        return {n: float(x) for n, x in zip(self.names, r)}


def _base(cfg: SearchConfig, where: str) -> tuple[Path, dict, dict[str, int]]:
    """The base mix file, its dict and each source's unique tokens (from the planner's own scan)."""
    from factory.mix.plan import make_plan
    from factory.mix.spec import mix_from_dict

    path = (Path(where).parent / cfg.base_mix).resolve()
    base = read_yaml(path)
    if base.get("phases"):
        raise FactoryError("the base mix has phases; a search sets the shares of one phase", where=where,
                           field="base_mix", fix="search over a mix without phases")
    m = mix_from_dict({**copy.deepcopy(base), "fit": "warn"}, str(path))
    plan, _ = make_plan(m, cfg.data_root, str(path))
    return path, base, {s["name"]: s["unique_tokens"] for s in plan["phases"][0]["sources"]}


def _grid(cfg: SearchConfig, base_path: Path, region: Region, mixes: list[dict[str, float]], scale: Scale,
          name: str, where: str) -> dict[str, Any]:
    """An ablation grid: one cell per share vector (zipped fields), at `scale`."""
    vary = {f"sources.{n}.share": [m[n] for m in mixes] for n in region.names}
    vary.update({f"sources.{n}.max_epochs": [ep] * len(mixes) for n, ep in region.max_epochs.items() if ep is not None})
    vary["description"] = [str(i) for i in range(len(mixes))]  # the cell's index, as its label `mix`
    return {"name": name, "base_mix": str(base_path), "data_root": str(Path(cfg.data_root).resolve()),
            "tokens": scale.tokens, "seeds": scale.seeds, "model": scale.model, "nproc": scale.nproc,
            "run_config": deep_merge(cfg.run_config, scale.run_config), "vary": [vary], "drop_zero_shares": False,
            "benchmarks": cfg.benchmarks or {"builtin": sorted(cfg.target)}, "labels": {"description": "mix"},
            "report": {"x": "mix", "group": None, "title": f"{name}", "notes": where}}


def _shown(p: Path) -> str:
    """A path as the report shows it: relative to the working directory when under it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def target_of(scores: dict[str, Any], target: dict[str, float], where: str) -> float:
    missing = [b for b in target if b not in scores]
    if missing:
        raise FactoryError(f"the runs have no score for {', '.join(missing)} (they have {sorted(scores)})", where=where,
                           field="target", fix="name benchmarks the runs are evaluated on (benchmarks.builtin)")
    return float(sum(w * scores[b]["score"] for b, w in target.items()))


def ablation_objective(cfg: SearchConfig, base_path: Path, region: Region, scale: Scale, where: str,
                       show: bool = True, every: list[dict[str, float]] | None = None) -> Objective:
    """Train and evaluate the mixes through the ablation runner; each mix's target, averaged over seeds.
    The grid holds `every` proxy mix (default: those asked for), each labelled by its place there, so
    a resumed search finds the cells it trained before."""
    from factory import ablate

    def run(mixes: list[dict[str, float]], folder: Path) -> Iterator[tuple[int, float]]:
        allm = every or mixes
        key = {json.dumps(m, sort_keys=True): i for i, m in enumerate(allm)}
        grid = _write_grid(folder, _grid(cfg, base_path, region, allm, scale, f"{cfg.name}-{folder.name}", where))
        res = ablate.run(grid, folder / "runs", show=show)
        by: dict[int, list[float]] = {}
        for r in res["results"]:
            by.setdefault(int(r["params"]["mix"]), []).append(target_of(r["scores"], cfg.target, where))
        for j, m in enumerate(mixes):
            i = key[json.dumps(m, sort_keys=True)]
            if i in by:
                yield j, float(np.mean(by[i]))

    return run


def _write_grid(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / "grid.yaml"
    grid.write_text(yaml.safe_dump(spec, sort_keys=False))
    return grid


def _plan(grid: Path, show: bool) -> dict[str, Any]:
    """`factory ablate GRID --plan-only` for one step of the search: its task list and runs to do."""
    from factory import ablate

    return ablate.run(grid, grid.parent / "runs", show=show, plan_only=True)


def search(path: str | Path, out: str | Path | None = None, objective: Objective | None = None,
           validate: bool = False, show: bool = True, plan_only: bool = False,
           results: list[str | Path] | None = None) -> dict[str, Any]:
    """Run (or resume) the search in `path`; returns the report dict (see the module doc).

    `plan_only` trains nothing: it writes the task list of the first step whose runs are missing
    (the proxies, then with `validate` the validation runs) and returns {"step", "tasks_file",
    "to_run", ...}; train it with `python -m train.suite TASKS` and call again. `results` are the
    finished runs brought back from another machine (JSONL of eval.json records, or folders of
    eval.json files), put in place before anything else."""
    from factory.ablate.search.report import write
    from factory.ablate.search.transfer import import_results

    where = str(path)
    cfg = load(path)
    o = Path(out or cfg.out or f"runs/mixsearch/{cfg.name}")
    base_path, base, unique = _base(cfg, where)
    if (base_path.parent / f"{cfg.name}.yaml").resolve() == Path(path).resolve():
        raise FactoryError(f"the proposal would be written over this search file ({cfg.name}.yaml beside the base mix)",
                           where=where, field="name", fix="give the search another name than its file's")
    proxy_region = Region(cfg, base, where, unique, cfg.proxy.tokens)
    final_tokens = max([int(base.get("total_tokens") or 0), cfg.proxy.tokens]
                       + ([cfg.validate_.tokens] if cfg.validate_ else []))
    final = Region(cfg, base, where, unique, final_tokens)
    rng = np.random.default_rng(cfg.seed)
    X = design.DESIGNS[cfg.design](proxy_region.lo, proxy_region.hi, proxy_region.mass, cfg.proxies, rng)
    mixes = [proxy_region.shares(w) for w in X]
    o.mkdir(parents=True, exist_ok=True)
    head = {"config_hash": config_hash(cfg), "mixes": mixes}
    if (o / "search.json").exists() and json.loads((o / "search.json").read_text())["config_hash"] != head["config_hash"]:
        raise FactoryError("this folder holds a search with another config", where=str(o),
                           fix="use another --out, or delete the folder to start over")
    (o / "search.json").write_text(json.dumps(head, indent=1))
    imported = import_results(o, results or [])
    done = {}
    if (o / "scores.jsonl").exists():
        done = {r["index"]: r for r in map(json.loads, (o / "scores.jsonl").read_text().splitlines()) if r}
    todo = [i for i in range(len(mixes)) if i not in done]
    if todo and plan_only and objective is None:
        grid = _write_grid(o / "proxies", _grid(cfg, base_path, proxy_region, mixes, cfg.proxy,
                                                f"{cfg.name}-proxies", where))
        p = _plan(grid, show)
        if p["to_run"]:
            return {"name": cfg.name, "step": "proxies", "out": str(o), "tasks_file": p["tasks_file"],
                    "to_run": p["to_run"], "done": p["skipped"], "imported": imported}
    if todo:
        objective = objective or ablation_objective(cfg, base_path, proxy_region, cfg.proxy, where, show, mixes)
        with open(o / "scores.jsonl", "a") as fh:
            for j, score in objective([mixes[i] for i in todo], o / "proxies"):
                i = todo[j]
                done[i] = {"index": i, "shares": mixes[i], "score": score}
                fh.write(json.dumps(done[i]) + "\n")
                fh.flush()
    missing = [i for i in range(len(mixes)) if i not in done]
    if missing:
        raise FactoryError(f"{len(missing)} proxy run(s) have no score (mix {missing[0]} first)", where=str(o / "proxies"),
                           fix="rerun the search: finished proxies are kept and the rest are trained")
    y = np.array([done[i]["score"] for i in range(len(mixes))])
    sign = 1.0 if cfg.maximize else -1.0
    cv = fit.cross_validate(X, sign * y, seed=cfg.seed)
    chosen = fit.best(cv)
    model = fit.FITS[chosen](X, sign * y)
    cand = design.sample(final.lo, final.hi, final.mass, 20000, np.random.default_rng(cfg.seed + 1))
    pred = model.predict(cand)
    top = cand[np.argsort(-pred)[:50]]
    best = top.mean(0)  # the region is convex: the mean of feasible points is feasible
    boot = fit.bootstrap(chosen, X, sign * y, best[None, :], seed=cfg.seed)[:, 0]
    resid = float(np.std(cv[chosen]["pred"] - sign * y))
    mean = float(model.predict(best[None, :])[0])
    half = 1.96 * float(np.sqrt(np.var(boot) + resid ** 2))
    proposal = final.shares(best)
    mix = _proposal_mix(cfg, base, proposal, final)
    text = f"# proposed by `factory mix search {where}` ({chosen} fit, held-out Spearman {cv[chosen]['spearman']:.2f})\n"
    text += yaml.safe_dump(mix, sort_keys=False)
    (o / f"{cfg.name}.yaml").write_text(text)
    (base_path.parent / f"{cfg.name}.yaml").write_text(text)
    rep = {"name": cfg.name, "target": cfg.target, "maximize": cfg.maximize, "proxies": len(mixes),
           "fit": {k: {"spearman": round(v["spearman"], 3), "rmse": round(v["rmse"], 4)} for k, v in cv.items()},
           "chosen": chosen, "proposal": proposal, "mix_file": _shown(base_path.parent / f"{cfg.name}.yaml"),
           "predicted": {"score": round(sign * mean, 4), "low": round(sign * mean - half, 4),
                         "high": round(sign * mean + half, 4)},
           "best_proxy": {**done[int(np.argmax(sign * y))]},
           "observed": [done[i] for i in range(len(mixes))], "heldout_pred": [round(sign * p, 4) for p in cv[chosen]["pred"]]}
    if validate:
        val = _validate(cfg, base_path, final, proposal, where, o, show, plan_only)
        if "tasks_file" in val:
            write(rep, o, final.names, model, sign, final)
            return {**rep, **val, "step": "validate", "out": str(o), "imported": imported}
        rep["validation"] = val
    write(rep, o, final.names, model, sign, final)
    return {**rep, "imported": imported}


def _proposal_mix(cfg: SearchConfig, base: dict, shares: dict[str, float], region: Region) -> dict:
    mix = copy.deepcopy(base)
    mix["name"] = cfg.name
    mix["description"] = f"Proposed by a mix search over {', '.join(region.names)} ({cfg.description or cfg.name})."
    for s in mix["sources"]:
        if s["name"] in shares:
            s["share"] = shares[s["name"]]
            if region.max_epochs.get(s["name"]) is not None:
                s["max_epochs"] = region.max_epochs[s["name"]]
    return mix


def _validate(cfg: SearchConfig, base_path: Path, region: Region, proposal: dict[str, float], where: str, o: Path,
              show: bool, plan_only: bool = False) -> dict[str, Any]:
    """The proposal and each baseline at the validation scale, seeds x target, with 95% intervals
    (with `plan_only` and runs still to do: {"tasks_file", "to_run", "done"} instead)."""
    from factory import ablate
    from factory.ablate.report import interval, welch

    v = cfg.validate_
    if v is None:
        raise FactoryError("--validate needs a `validate` section", where=where, field="validate",
                           fix="add validate: {model: ..., tokens: N, seeds: [0, 1, 2], baselines: [...]}")
    names, mixes = ["proposal"], [proposal]
    for b in v.baselines:
        bmix = read_yaml((Path(where).parent / b).resolve())
        got = {s["name"]: float(s.get("share", 0)) for s in bmix.get("sources", [])}
        extra = [n for n in got if n not in region.names and got[n] > 0]
        if extra:
            raise FactoryError(f"baseline {b} draws from {extra}, which the search does not vary", where=where,
                               field="validate.baselines", fix="compare with mixes over the varied sources only")
        names.append(Path(b).stem)
        mixes.append({n: got.get(n, 0.0) for n in region.names})
    spec = _grid(cfg, base_path, region, mixes, v, f"{cfg.name}-validate", where)
    spec["drop_zero_shares"] = True
    grid = _write_grid(o / "validate", spec)
    if plan_only:
        p = _plan(grid, show)
        if p["to_run"]:
            return {"tasks_file": p["tasks_file"], "to_run": p["to_run"], "done": p["skipped"]}
    res = ablate.run(grid, grid.parent / "runs", show=show)
    per: dict[int, dict[int, float]] = {}  # mix -> seed -> target
    for r in res["results"]:
        per.setdefault(int(r["params"]["mix"]), {})[int(r["seed"])] = target_of(r["scores"], cfg.target, where)
    rows = {names[i]: {"shares": mixes[i], **interval(list(per.get(i, {}).values()))} for i in range(len(names))}
    sign = 1.0 if cfg.maximize else -1.0
    versus = {}
    for i, (n, r) in enumerate(rows.items()):
        if n == "proposal":
            continue
        diff, half = welch(r, rows["proposal"])  # proposal - baseline, 95% half-width
        versus[n] = {"difference": round(diff, 4), "half": round(half, 4),
                     "wins": bool(sign * diff > 0), "significant": bool(sign * diff > half)}
        # the same seed is the same initialisation and data order in every mix: differences paired by seed
        common = sorted(set(per.get(0, {})) & set(per.get(i, {})))
        d = interval([per[0][s] - per[i][s] for s in common])
        if d["n"] > 1:
            versus[n]["paired"] = {"difference": round(d["mean"], 4), "half": round(d["half"], 4), "seeds": d["n"],
                                   "significant": bool(abs(d["mean"]) > d["half"])}
    return {"scale": v.model_dump(), "mixes": rows, "versus": versus}
