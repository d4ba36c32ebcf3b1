"""Pilot and forecast: run N seeds through generate and curate, then extrapolate to the full seed
set what the run will produce and cost, each figure with a 95% interval from the pilot's spread.

The pilot's seeds are spread evenly over the full set. Per pilot seed it counts what was paid
(prompt and completion tokens of every teacher request, from the pilot's request cache, so items
quarantined later count too), the documents generated and those kept by curation. A total over
the N_full seeds is N_full * mean, with the interval 1.96 * N_full * sd / sqrt(n) * sqrt(1 - n /
N_full) (a sample without replacement). Teacher replica-hours and wall time use the completion
tokens per second per replica measured during the pilot (taken as measured: its interval is the
tokens' interval); cost uses the teacher config's prices.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import fsspec

from factory.generate.config import GenerateConfig


def spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` rows spread evenly over `rows` (all of them when n >= len(rows))."""
    if n >= len(rows):
        return list(rows)
    return [rows[int(i * len(rows) / n)] for i in range(n)]


def estimate(values: list[float], population: int) -> dict[str, float]:
    """Total over `population` items from a sample's values: point and 95% interval."""
    n = len(values)
    mean = sum(values) / n if n else 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * population * sd / math.sqrt(n) * math.sqrt(max(0.0, 1 - n / population)) if n else 0.0
    total = population * mean
    return {"total": total, "low": max(0.0, total - half), "high": total + half, "per_seed": mean, "sd_per_seed": sd}


def paid_per_seed(cache_dir: str) -> dict[str, tuple[int, int]]:
    """(prompt, completion) tokens per seed id over every record of a request cache."""
    fs, root = fsspec.core.url_to_fs(cache_dir)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    seen: set[str] = set()
    for f in sorted(fs.find(root)):
        if ".jsonl" not in f:
            continue
        for line in fs.cat_file(f).decode(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                key, seed, c = rec["key"], rec.get("seed") or "", rec["completion"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line: the cache skips it too
            if key in seen:
                continue
            seen.add(key)
            out[seed][0] += int(c.get("prompt_tokens") or 0)
            out[seed][1] += int(c.get("completion_tokens") or 0)
    return {k: (v[0], v[1]) for k, v in out.items()}


def per_seed_docs(folder: str) -> dict[str, int]:
    """Documents per seed id in a stage folder (none when the stage kept nothing)."""
    from factory.core.errors import FactoryError
    from factory.core.stage import read_docs

    counts: dict[str, int] = defaultdict(int)
    try:
        metas = read_docs(folder).column("meta").to_pylist()
    except FactoryError:  # no shards: the stage kept nothing
        return counts
    for m in metas:
        counts[str((m or {}).get("seed_id") or "")] += 1
    return counts


def forecast(pilot_ids: list[str], n_full: int, paid: dict[str, tuple[int, int]], generated: dict[str, int],
             kept: dict[str, int], price: Any, tok_s_per_replica: float, replicas: int) -> dict[str, Any]:
    """The forecast table's figures (see the module docstring)."""
    ct = [float(paid.get(s, (0, 0))[1]) for s in pilot_ids]
    pt = [float(paid.get(s, (0, 0))[0]) for s in pilot_ids]
    out: dict[str, Any] = {
        "seeds": n_full, "pilot_seeds": len(pilot_ids), "replicas": replicas,
        "completion_tokens": estimate(ct, n_full), "prompt_tokens": estimate(pt, n_full),
        "documents_generated": estimate([float(generated.get(s, 0)) for s in pilot_ids], n_full),
        "documents_kept": estimate([float(kept.get(s, 0)) for s in pilot_ids], n_full),
        "cost": estimate([price.cost(p, c) for p, c in zip(pt, ct)], n_full),
        "completion_tok_s_per_replica": round(tok_s_per_replica, 2)}
    tokens = out["completion_tokens"]
    if tok_s_per_replica > 0:
        hours = {k: tokens[k] / tok_s_per_replica / 3600 for k in ("total", "low", "high")}
        out["replica_hours"] = hours
        out["wall_hours"] = {k: v / replicas for k, v in hours.items()}
    return out


def run_pilot(cfg: GenerateConfig, n: int, where: str = "generate config", replicas: int | None = None,
              curate_config: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Generate and curate `n` seeds of `cfg` into `<out>-pilot/`; return the forecast for all seeds."""
    from factory import curate
    from factory.generate import load_seeds, run, teacher_config
    from factory.generate.shard import seed_id_of

    seeds, _ = load_seeds(cfg)
    pilot = spread(seeds, n)
    root = cfg.out.rstrip("/") + "-pilot"
    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/seeds.jsonl", "w") as f:
        for r in pilot:
            f.write(json.dumps(r, default=str) + "\n")
    pcfg = cfg.model_copy(update={"seeds": f"{root}/seeds.jsonl", "limit": None, "out": f"{root}/generate",
                                  "cache_dir": None, "shards": max(1, min(cfg.shards, len(pilot)))})
    gm = run(pcfg, where=where, show_progress=show_progress)
    ccfg = curate.load(curate_config, inputs=[f"{root}/generate"], out=f"{root}/curated")
    curate.run(ccfg)
    tcfg = teacher_config(cfg, where)
    n_endpoints = len(tcfg.endpoints) or tcfg.local_replicas
    this = gm.get("this_run", {})
    wall = float(this.get("wall_s") or 0)
    tok_s = float(this.get("completion_tokens") or 0) / wall / max(1, n_endpoints) if wall else 0.0
    ids = [seed_id_of(r) for r in pilot]
    fc = forecast(ids, len(seeds), paid_per_seed(f"{root}/generate/cache"), per_seed_docs(f"{root}/generate"),
                  per_seed_docs(f"{root}/curated"), tcfg.price, tok_s, replicas or max(1, n_endpoints))
    fc.update(pilot_folder=root, pilot_wall_s=wall, pilot_requests=this.get("requests", 0),
              pilot_cache_hits=this.get("cache_hits", 0))
    with fs.open(f"{path}/forecast.json", "w") as f:
        f.write(json.dumps(fc, indent=1))
    return fc


def rows(fc: dict[str, Any]) -> list[list[str]]:
    """The forecast as table rows: quantity, forecast, 95% interval, per seed."""
    def fmt(v: float, money: bool = False) -> str:
        return f"${v:,.2f}" if money else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"

    out = [["seeds", f"{fc['seeds']:,}", f"pilot of {fc['pilot_seeds']}", ""]]
    for key, label, money in (("completion_tokens", "completion tokens", False), ("prompt_tokens", "prompt tokens", False),
                              ("documents_generated", "documents generated", False),
                              ("documents_kept", "documents kept after curation", False), ("cost", "cost", True)):
        e = fc[key]
        out.append([label, fmt(e["total"], money), f"{fmt(e['low'], money)} - {fmt(e['high'], money)}",
                    fmt(e["per_seed"], money) if not money else f"${e['per_seed']:.6f}"])
    if "replica_hours" in fc:
        h, w = fc["replica_hours"], fc["wall_hours"]
        out.append([f"teacher replica-hours ({fc['completion_tok_s_per_replica']:.1f} tok/s each)", f"{h['total']:.3g}",
                    f"{h['low']:.3g} - {h['high']:.3g}", ""])
        out.append([f"wall hours with {fc['replicas']} replica(s)", f"{w['total']:.3g}", f"{w['low']:.3g} - {w['high']:.3g}", ""])
    return out
