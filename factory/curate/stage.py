"""The curation stage: datatrove filters, synthetic-specific filters, dedup and decontamination, on
one machine (LocalPipelineExecutor) or on Ray (RayPipelineExecutor) with the same output.

Entry point: `run(cfg) -> manifest`. The output stage folder holds the kept shards (DOC_SCHEMA,
provenance untouched), `rejected/` (the same rows plus `reason` and `detail`), `report.json` and
`report.md` (counts, examples per reason, the dedup clusters removed), a dataset card and
`manifest.json` (counts per reason, timings).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pyarrow.parquet as pq

from factory.core.errors import FactoryError
from factory.curate.config import CurateConfig


def _rows(fs, files: list[str]) -> int:
    n = 0
    for f in files:
        with fs.open(f, "rb") as fh:
            n += pq.ParquetFile(fh).metadata.num_rows
    return n


def _input_rows(shards: list[tuple[str, list[str]]]) -> int:
    """Rows of (root URL, relative files) pairs, each root read with its own filesystem."""
    import fsspec

    n = 0
    for root, files in shards:
        fs, path = fsspec.core.url_to_fs(root)
        n += _rows(fs, [f"{path}/{f}" for f in files])
    return n


def _content(cfg: CurateConfig, bench: list[str]) -> dict[str, str]:
    """sha256 of the files whose content decides the output beyond the config's own settings: the
    decontamination benchmarks and the quality model (an edited file is a changed config)."""
    import hashlib

    import fsspec

    files = list(bench) + ([cfg.filters.quality.model] if cfg.filters.quality.enabled and cfg.filters.quality.model else [])
    out = {}
    for url in files:
        fs, p = fsspec.core.url_to_fs(url)
        if fs.isfile(p):
            out[url] = hashlib.sha256(fs.cat_file(p)).hexdigest()[:16]
    return out


def _ray_session(cfg: CurateConfig) -> bool:
    """Connect to (or start) Ray when asked; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    from factory.curate.raysession import init

    init(cfg.executor.ray_address)
    return True


def run(cfg: CurateConfig, *, log: Any = None, inject: Any = None) -> dict[str, Any]:
    """Curate `cfg.inputs` into the stage folder `cfg.out`; return its manifest.

    Inputs, references, benchmarks and the output are fsspec URLs, each with its own filesystem.
    `log(str)` receives one line per finished job. `inject(jobs)` may edit the compiled datatrove
    jobs before they run: it exists for fault and latency injection in tests.
    """
    from factory.core.stage import check_store, storage_errors

    if cfg.out:
        check_store(cfg.out)
        with storage_errors(cfg.out, remote_only=True):
            return _run(cfg, log, inject)
    return _run(cfg, log, inject)


def _run(cfg: CurateConfig, log: Any = None, inject: Any = None) -> dict[str, Any]:
    from factory.core.stage import StageDir, to_url
    from factory.curate.decont import benchmark_files
    from factory.curate.io import shard_files

    if not cfg.out:
        raise FactoryError("no output folder given", field="out", fix="set out: PATH (or --out)")
    if not cfg.inputs:
        raise FactoryError("no inputs given", field="inputs", fix="list one or more stage folders of document rows")
    inputs = [shard_files(u) for u in cfg.inputs]
    refs = [shard_files(u) for u in cfg.dedup.reference]
    bench = benchmark_files(cfg.decont.benchmarks) if cfg.decont.enabled and cfg.decont.benchmarks else []
    stage = StageDir(cfg.out, "curate", cfg.output_hash_view(), inputs=cfg.inputs + cfg.dedup.reference,
                     content=_content(cfg, bench))
    old = StageDir.read_manifest(stage.url)
    if old and old.get("status") == "done":
        return old
    fs, out = stage.fs, stage.root
    out_url = to_url(fs, out)  # what datatrove's steps and workers open, each with its own filesystem
    started = _ray_session(cfg) if cfg.executor.use_ray else False
    try:
        return _curate(cfg, stage, inputs, refs, bench, out_url, log, inject)
    finally:
        if started:
            import ray

            ray.shutdown()


def _curate(cfg: CurateConfig, stage, inputs, refs, bench, out_url: str, log: Any, inject: Any) -> dict[str, Any]:
    import fsspec

    from factory.core.stage import DATA, doc_files, doc_path, licences, write_card
    from factory.curate.decont import build_index
    from factory.curate.logs import shown
    from factory.curate.pipeline import compile_jobs, run_jobs, work_folder
    from factory.curate.report import build, markdown, read_rejected

    fs, out = stage.fs, stage.root
    work_url, scratch = work_folder(cfg, out_url)
    wfs, work = fsspec.core.url_to_fs(work_url)
    stage.extra["work"] = "this machine's scratch" if scratch else work_url
    t0 = time.time()
    index_dir = None
    if bench:
        index_dir = f"{work_url}/decont_index"
        hashes = build_index(bench, index_dir, cfg.decont.text_fields, cfg.decont.n_grams, cfg.decont.min_words,
                             cfg.language)
        stage.extra["decont_index"] = hashes
    stage.timings["decont_index_s"] = round(time.time() - t0, 3)

    n_in = _input_rows(inputs)
    jobs = compile_jobs(cfg, inputs, refs, work_url, index_dir)
    if inject:
        inject(jobs)

    with shown(out_url, jobs, n_in) as shown_done:  # a progress line; datatrove's logs to datatrove.log
        def on_job(name: str, secs: float) -> None:
            stage.timings[f"{name}_s"] = round(secs, 3)
            shown_done(name, secs)
            if log:
                log(f"curate: {name} done in {secs:.1f}s")

        run_jobs(cfg, jobs, work_url, on_job, n_in)

    # finalize: complete shards appear under their final names, all at once
    wfs.invalidate_cache()  # workers (other processes, other nodes) wrote these
    fs.makedirs(f"{out}/rejected", exist_ok=True)
    fs.makedirs(f"{out}/{DATA}", exist_ok=True)
    for sub, dest in (("kept", lambda n: f"{out}/{doc_path(n)}"), ("rejected", lambda n: f"{out}/rejected/{n}")):
        for part in sorted(wfs.glob(f"{work}/{sub}/*.parquet.part")):
            final = dest(part.rsplit('/', 1)[1].removesuffix('.part'))
            if wfs is fs:
                fs.mv(part, final)
            else:  # scratch on this machine: one upload per shard
                fs.put_file(part, final)
                wfs.rm(part)
    fs.invalidate_cache()
    kept_files = doc_files(fs, out)
    rej_files = sorted(fs.glob(f"{out}/rejected/*.parquet"))
    rejected = read_rejected(fs, rej_files)
    n_kept = _rows(fs, kept_files)
    dropped = Counter(r["reason"] for r in rejected)
    detail = Counter(f"{r['reason']}:{_detail_key(r)}" for r in rejected)
    if n_in != n_kept + len(rejected):
        raise FactoryError(f"{n_in} documents in but {n_kept} kept + {len(rejected)} rejected",
                           where=stage.url, fix="delete the output folder and rerun; report this as a bug")
    stage.counts.update({"in": n_in, "kept": n_kept, "rejected": len(rejected),
                         "reference": _input_rows(refs)})
    stage.dropped.update(dropped)
    report = build(fs, wfs, work, rejected, kept_files, cfg.dedup.report_clusters)
    summary = {"documents in": n_in, "kept": n_kept, "rejected": len(rejected),
               "executor": "ray" if cfg.executor.use_ray else "local", "dropped": dict(dropped)}
    stage.write_json("report.json", {"summary": summary, "dropped_detail": dict(detail), **report})
    stage.write_bytes("report.md", markdown(summary, report).encode())
    recipes = Counter()
    for f in kept_files:
        with fs.open(f, "rb") as fh:
            t = pq.ParquetFile(fh).read(columns=["meta"])
        recipes.update(m.get("recipe") or "-" for m in t.column("meta").to_pylist())
    write_card(stage, "Curated documents", {
        "documents": n_kept, "rejected": len(rejected),
        "removed by reason": ", ".join(f"{k} {v}" for k, v in dropped.most_common()) or "none",
        "recipes": ", ".join(f"{k} {v}" for k, v in recipes.most_common()) or "-",
        "dedup clusters removed": report["clusters_total"], "report": "report.md"}, cfg.licence or licences(cfg.inputs))
    if scratch and not cfg.keep_work:
        wfs.rm(work, recursive=True)
    elif not cfg.keep_work:
        for sub in ("filtered", "sigs", "dups", "dups_verified", "clusters", "kept", "rejected", "index", "decide",
                    "decont_index"):
            if wfs.exists(f"{work}/{sub}"):
                wfs.rm(f"{work}/{sub}", recursive=True)
    return stage.finish(dropped_detail=dict(detail), report="report.md",
                        executor="ray" if cfg.executor.use_ray else "local")


def _detail_key(r: dict) -> str:
    d = r.get("detail") or ""
    if r["reason"] in ("gopher_quality", "gopher_repetition", "fineweb_quality", "c4_quality", "length"):
        return d.split(":")[0]
    if r["reason"] == "contamination":
        try:
            return json.loads(d).get("task", "")
        except ValueError:
            return ""
    return r["reason"] if r["reason"].endswith("dup") or r["reason"].endswith("reference") else (d[:40] if d else "")
