"""The generate stage: seeds x recipes x samples through the teacher, on Ray, resumable.

Seeds are split into shards; Ray actors (async, one TeacherClient each, the teacher limits split
between them) take shards from the driver and run each shard's items concurrently. A shard is
written atomically when complete (see factory.teacher.shard); a rerun skips finished shards and
answers every request already paid for from the per-shard request cache. Inside a Ray job the
cluster is picked up from RAY_ADDRESS; without one a small local Ray starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from factory.config import load_config
from factory.errors import FactoryError
from factory.schema import sha
from factory.readers import read_jsonl
from factory.stage import StageDir, exists, is_local, licences, read_docs, write_card
from factory.teacher.cache import adopt
from factory.teacher.config import TeacherConfig, local_config
from factory.teacher.shard import ACCOUNT_KEYS, REJECT_SCHEMA, reject_row, seed_id_of, shard_name



class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: str = Field(description="a stage folder of seed rows, a parquet file, or a JSONL file")
    recipes: list[str] = Field(min_length=1, description="recipe names or paths")
    samples_per_seed: int = Field(1, ge=1)
    limit: int | None = Field(None, ge=1, description="use only the first N seeds")
    shards: int = Field(8, ge=1)
    teacher: TeacherConfig | str = Field(description="a TeacherConfig, or the path of its YAML file")
    recipe_sampling: dict[str, Any] = Field(default_factory=dict, description="overrides for every recipe step, e.g. max_tokens")
    out: str
    cache_dir: str | None = Field(None, description="request cache folder, any fsspec URL (default <out>/cache); runs that "
                                     "share one reuse each other's paid completions")
    cache_flush_every: int = Field(64, ge=1, description="on object storage: upload a shard's new completions as one "
                                   "segment every N of them (a lost node repays at most N per shard in flight)")
    cache_flush_s: float = Field(30.0, gt=0, description="on object storage: ... and at least every T seconds")
    ray_address: str | None = None
    workers: int = Field(2, ge=1, description="Ray actors sending requests")
    concurrency: int | None = Field(None, ge=1, description="items in flight per worker, a cap (default: twice the "
                                    "adaptive windows, at least 16; 16 with fixed windows)")
    worker_cpus: float = Field(0.25, ge=0)


def teacher_config(cfg: GenerateConfig, where: str = "generate config") -> TeacherConfig:
    if isinstance(cfg.teacher, TeacherConfig):
        return cfg.teacher
    p = Path(cfg.teacher)
    if not p.is_absolute() and not p.exists() and Path(where).is_file():
        p = Path(where).parent / p  # relative to the generate config
    return load_config(TeacherConfig, p)


def identity(cfg: GenerateConfig, tcfg: TeacherConfig, recipes: list) -> dict[str, Any]:
    """What decides the output (hashed into the manifest), the recipes' file contents included;
    endpoints, limits and workers do not."""
    models = sorted({e.model for e in tcfg.endpoints}) or ["local"]
    return {"seeds": cfg.seeds, "recipes": cfg.recipes, "recipe_sha": [r.content_sha for r in recipes],
            "samples_per_seed": cfg.samples_per_seed, "limit": cfg.limit,
            "shards": cfg.shards, "recipe_sampling": cfg.recipe_sampling, "teacher_models": models,
            "teacher_sampling": tcfg.sampling, "teacher_seed": tcfg.seed, "mode": tcfg.mode}


# seeds ---------------------------------------------------------------------------------------
def load_seeds(cfg: GenerateConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(good rows, quarantined rows): a seed needs non-empty `text` and an id (`id` or meta.seed_id)."""
    src = cfg.seeds
    if src.endswith(".jsonl"):
        if not exists(src):
            raise FactoryError("seed file not found", where=src, field="seeds", fix="run `factory seeds` or fix the path")
        numbered, unreadable = read_jsonl(src)
        rows: list[tuple[str, Any]] = [(f"line {n}", r) for n, r in numbered]
        rows += [(f"line {q['line']}", {"_bad": q["detail"]}) for q in unreadable]
        rows.sort(key=lambda lr: int(lr[0].split()[1]))
    else:
        rows = [(f"row {n}", r) for n, r in enumerate(read_docs(src).to_pylist(), 1)]
    good, bad = [], []
    for at, r in rows:
        problem = None
        if "_bad" in r:
            problem = r["_bad"]
        elif r.get("meta") is not None and not isinstance(r["meta"], dict):
            problem = f"{at}: meta is not an object"
        elif not isinstance(r.get("text"), str) or not r["text"].strip():
            problem = f"{at}: missing or empty text"
        elif not seed_id_of(r):
            problem = f"{at}: no id or meta.seed_id"
        if problem:
            sid = seed_id_of(r) if isinstance(r.get("meta") or {}, dict) else ""
            bad.append(reject_row(sid or at, "", 0, "malformed_seed", {"at": at, "problem": problem}))
        else:
            r.setdefault("meta", {})
            good.append(r)
        if cfg.limit and len(good) >= cfg.limit:
            break
    return good, bad


def split(rows: list[dict[str, Any]], shards: int) -> list[list[dict[str, Any]]]:
    return [rows[k::shards] for k in range(shards)]


# teacher ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def teacher_endpoints(tcfg: TeacherConfig) -> Iterator[TeacherConfig]:
    """The config as given, or pointing at N local replicas started for the duration."""
    if tcfg.endpoints:
        yield tcfg
        return
    from factory.teacher.server import LocalTeacher

    with LocalTeacher(replicas=tcfg.local_replicas) as lt:
        yield local_config(lt.endpoints, lt.model, **tcfg.model_dump(exclude={"endpoints", "local_replicas"}))


def probe(tcfg: TeacherConfig, where: str) -> None:
    """Check every endpoint before any work starts: one clear error for each bad one."""
    from factory.teacher.client import TeacherClient

    async def go() -> None:
        c = TeacherClient(tcfg, where=where)
        try:
            await c.start(probe=True)
        finally:
            await c.close()

    asyncio.run(go())


# run ---------------------------------------------------------------------------------------------
def resolve_in(name: str, where: str, field: str) -> Path:
    """A recipe's path; an unknown name is an error naming the config file and its field."""
    from factory.recipes.spec import resolve

    try:
        return resolve(name)
    except FactoryError as e:
        raise FactoryError(e.what, where=where, field=field, fix=e.fix) from None


def run(cfg: GenerateConfig, where: str = "generate config", show_progress: bool = True) -> dict[str, Any]:
    """Generate; returns the manifest. Raises FactoryError on bad input and when shards failed."""
    from factory.recipes import load_recipe

    tcfg = teacher_config(cfg, where)
    recipes = [load_recipe(resolve_in(r, where, f"recipes[{i}]"), **cfg.recipe_sampling) for i, r in enumerate(cfg.recipes)]
    seeds, bad = load_seeds(cfg)  # bad input fails here, before the output folder is touched
    if not seeds:
        first = json.loads(bad[0]["detail"])["problem"] if bad else "no rows"
        raise FactoryError(f"no usable seed rows ({len(bad)} malformed, first: {first})", where=cfg.seeds, field="seeds",
                           fix="each seed needs a non-empty text and an id (or meta.seed_id); see `factory seeds`")
    for r in recipes:  # an undefined template variable fails here, before any request
        sample = next((row for row in seeds if r.accepts(row)), seeds[0] if seeds else None)
        if sample is not None:
            r.check_templates(sample, f"seed {seed_id_of(sample)}")
    with StageDir(cfg.out, "generate", identity(cfg, tcfg, recipes), inputs=[cfg.seeds]) as stage:
        return _run(cfg, where, show_progress, tcfg, recipes, stage, seeds, bad)


def _run(cfg: GenerateConfig, where: str, show_progress: bool, tcfg: TeacherConfig, recipes: list, stage: StageDir,
         seeds: list[dict[str, Any]], bad: list[dict[str, Any]]) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs((cfg.cache_dir or f"{stage.url}/cache").rstrip("/"))
    cache_root = root if is_local(fs) else fs.unstrip_protocol(root)  # local: absolute, as every worker sees it
    if bad:
        stage.write_table("rejected/seeds.parquet", pa.Table.from_pylist(bad, schema=REJECT_SCHEMA))
    shards = split(seeds, cfg.shards)
    shard_of = {seed_id_of(r): k for k, rows in enumerate(shards) for r in rows}
    cache_dir = f"{cache_root}/layout-{sha([[seed_id_of(r) for r in rows] for rows in shards], n=12)}"
    adopted = adopt(cache_root, cache_dir, shard_of)
    todo = [k for k in range(cfg.shards) if not stage.done(shard_name(k))]
    this_run: dict[str, Any] = {"failed_shards": [], "cache_adopted": adopted}
    t0 = time.time()
    if todo:
        with teacher_endpoints(tcfg) as live:
            probe(live, where)
            if live.mode == "batch":
                from factory.teacher.batch import run_batch

                this_run.update(run_batch(live, {k: shards[k] for k in todo}, recipes, cfg.samples_per_seed, stage,
                                          cache_dir, cfg.concurrency))
            else:
                from factory.teacher.workers import run_on_ray

                this_run.update(run_on_ray(cfg, live, {k: shards[k] for k in todo}, recipes, stage, cache_dir,
                                           show_progress=show_progress))
    return finish(cfg, stage, len(seeds), bad, this_run, time.time() - t0)


def finish(cfg: GenerateConfig, stage: StageDir, n_seeds: int, bad: list[dict], this_run: dict[str, Any], wall: float) -> dict[str, Any]:
    totals: dict[str, Any] = {k: 0 for k in (*ACCOUNT_KEYS, "units", "docs", "duplicates")}
    totals["cost"] = 0.0
    reasons: dict[str, int] = {"malformed_seed": len(bad)} if bad else {}
    nodes: dict[str, dict[str, Any]] = {}
    done = 0
    for k in range(cfg.shards):
        if not stage.done(shard_name(k)):
            continue
        done += 1
        with stage.fs.open(stage.path(f"stats/shard-{k:05d}.json")) as f:
            st = json.loads(f.read())
        for key in totals:
            totals[key] += st.get(key, 0)
        if st.get("node_id"):  # which node ran which shard
            node = nodes.setdefault(st["node_id"], {"ip": st.get("node_ip"), "host": st.get("host"), "shards": []})
            node["shards"].append(k)
        for r, n in st.get("rejected_by_reason", {}).items():
            reasons[r] = reasons.get(r, 0) + n
    totals["cost"] = round(totals["cost"], 6)
    stage.counts.update({"seeds": n_seeds, "shards": cfg.shards, "shards_done": done, "docs": totals["docs"],
                         "units": totals["units"], "rejected": sum(reasons.values())})
    stage.dropped.update(reasons)
    stage.timings["wall_s"] = round(wall, 3)
    failed = this_run.get("failed_shards") or []
    if done == cfg.shards:
        write_card(stage, "Synthetic documents", {"documents": totals["docs"], "seeds": n_seeds,
                   "recipes": ", ".join(cfg.recipes), "samples per seed": cfg.samples_per_seed,
                   "teacher": ", ".join(stage.config["teacher_models"])}, licence=licences([cfg.seeds]))
        manifest = stage.finish(accounting=totals, this_run=this_run, nodes=nodes)
    else:
        stage.extra.update(accounting=totals, this_run=this_run, nodes=nodes)
        stage._write_manifest(status="incomplete")
        manifest = StageDir.read_manifest(stage.url) or {}
    if failed:
        raise FactoryError(f"{len(failed)} shard(s) did not finish ({failed[0].get('error', '')[:200]})", where=cfg.out,
                           fix="rerun the same command: finished shards are kept and paid requests come from the cache")
    return manifest
