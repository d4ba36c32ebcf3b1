"""The generate stage's driver: probe the teacher, hand shards to workers (or batch mode), write the manifest.

Seeds are split into shards; Ray actors (async, one TeacherClient each, the teacher limits split
between them) take shards from the driver and run each shard's items concurrently; on one machine
with a few endpoints, the default runs the same worker in the driver's event loop, without Ray. A shard is
written atomically when complete (see factory.generate.shard); a rerun skips finished shards and
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

from factory.core.errors import FactoryError
from factory.core.schema import sha
from factory.core.stage import StageDir, doc_path, is_local, licences, write_card
from factory.generate.config import GenerateConfig, identity, teacher_config
from factory.generate.inputs import load_seeds, split
from factory.generate.shard import ACCOUNT_KEYS, REJECT_SCHEMA, seed_id_of, shard_name
from factory.generate.workers import Workers, in_process, run_on_ray
from factory.teacher.cache import adopt
from factory.teacher.config import TeacherConfig, local_config


# teacher ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def teacher_endpoints(tcfg: TeacherConfig) -> Iterator[TeacherConfig]:
    """The config as given, or pointing at N local replicas started for the duration."""
    if tcfg.endpoints:
        yield tcfg
        return
    from factory.teacher.server import LocalTeacher

    with LocalTeacher(replicas=tcfg.local_replicas) as lt:
        yield local_config(lt.endpoints, lt.model, api_key_env=lt.api_key_env,
                           **tcfg.model_dump(exclude={"endpoints", "local_replicas"}))


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


def probed(tcfg: TeacherConfig, where: str) -> float:
    """probe(), timed: its seconds."""
    t = time.time()
    probe(tcfg, where)
    return round(time.time() - t, 3)


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
    for i, r in enumerate(recipes):  # a length max_tokens cannot hold fails here, before any request
        note = r.check_lengths(where, "recipe_sampling.max_tokens" if cfg.recipe_sampling.get("max_tokens")
                               else f"recipes[{i}]")
        if note and show_progress:
            from factory.core.ui import console

            console.print(note, markup=False)
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
    finished = finished_shards(stage, cfg.shards)
    todo = [k for k in range(cfg.shards) if k not in finished]
    this_run: dict[str, Any] = {"failed_shards": []}
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        live = tcfg if tcfg.endpoints else None
        if todo and live is not None:  # given endpoints are probed first: a bad one fails before Ray starts
            this_run["probe_s"] = probed(live, where)
        if live is None:  # the local teacher's key, exported before a local Ray starts, so its workers send it
            from factory.teacher.server import local_key

            local_key()
        n_endpoints = len(tcfg.endpoints) or tcfg.local_replicas
        local = tcfg.mode == "batch" or in_process(cfg, n_endpoints)
        # on Ray: Ray and its workers start next, so their start overlaps the cache adoption (and a local teacher's start)
        pool = stack.enter_context(Workers(cfg, stage, cache_dir, len(todo), n_endpoints)) if todo and not local else None
        this_run["cache_adopted"] = adopt(cache_root, cache_dir, shard_of)
        if todo:
            if live is None:
                live = stack.enter_context(teacher_endpoints(tcfg))
                this_run["probe_s"] = probed(live, where)
            if tcfg.mode == "batch":
                from factory.generate.batch import run_batch

                this_run.update(run_batch(live, {k: shards[k] for k in todo}, recipes, cfg.samples_per_seed, stage,
                                          cache_dir, cfg.concurrency))
            elif pool is None:
                from factory.generate.inprocess import run_in_process

                this_run.update(run_in_process(cfg, live, {k: shards[k] for k in todo}, recipes, stage, cache_dir,
                                               show_progress=show_progress))
            else:
                this_run.update(run_on_ray(cfg, live, {k: shards[k] for k in todo}, recipes, pool, show_progress=show_progress))
    if pool is not None:
        this_run["timeline"]["teardown_s"] = pool.teardown_s  # after wall_s: Ray's stop is not the run's time
    return finish(cfg, stage, len(seeds), bad, this_run, time.time() - t0)


def finished_shards(stage: StageDir, n: int) -> set[int]:
    """The shards whose documents are written (each shard's completion marker), from one listing of
    data/ rather than a request per shard."""
    folder = doc_path(shard_name(0)).rsplit("/", 1)[0]
    stage.fs.invalidate_cache(stage.path(folder))  # invalidating a folder leaves its subfolders' listings: drop this one's
    names = {p.rsplit("/", 1)[-1] for p in stage.list(f"{folder}/*.parquet")}
    return {k for k in range(n) if doc_path(shard_name(k)).rsplit("/", 1)[-1] in names}


def finish(cfg: GenerateConfig, stage: StageDir, n_seeds: int, bad: list[dict], this_run: dict[str, Any], wall: float) -> dict[str, Any]:
    totals: dict[str, Any] = {k: 0 for k in (*ACCOUNT_KEYS, "units", "docs", "duplicates")}
    totals["cost"] = 0.0
    reasons: dict[str, int] = {"malformed_seed": len(bad)} if bad else {}
    nodes: dict[str, dict[str, Any]] = {}
    finished = sorted(finished_shards(stage, cfg.shards))
    done = len(finished)
    # the finished shards' stats read together (on a store: the GETs at once)
    stats = stage.fs.cat([stage.path(f"stats/shard-{k:05d}.json") for k in finished]) if finished else {}
    for k in finished:
        st = json.loads(stats[stage.path(f"stats/shard-{k:05d}.json")])
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
    if done == cfg.shards and totals["units"] and not totals["docs"]:  # sent requests, made nothing: never `done`
        stage.extra.update(accounting=totals, this_run=this_run, nodes=nodes)
        top = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])[:3])
        raise FactoryError(f"{totals['units']} items and no document made (rejected: {top or 'none recorded'})",
                           where=cfg.out, fix="read the reasons in rejected/*.parquet beside their seeds; fix the "
                           "recipes, the sampling or the teacher, and run again to a new folder")
    if done == cfg.shards:
        write_card(stage, "Synthetic documents", {"documents": totals["docs"], "seeds": n_seeds,
                   "recipes": ", ".join(cfg.recipes), "samples per seed": cfg.samples_per_seed,
                   "teacher": ", ".join(stage.config["teacher_models"])}, licence=licences([cfg.seeds]))
        manifest = stage.finish(accounting=totals, this_run=this_run, nodes=nodes)
    else:
        manifest = stage.partial(accounting=totals, this_run=this_run, nodes=nodes)
    if failed:
        raise FactoryError(f"{len(failed)} shard(s) did not finish ({failed[0].get('error', '')[:200]})", where=cfg.out,
                           fix="rerun the same command: finished shards are kept and paid requests come from the cache")
    return manifest
