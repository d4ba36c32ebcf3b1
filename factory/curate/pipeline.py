"""Compile a CurateConfig into datatrove pipelines and run them, locally or on Ray.

Five datatrove jobs, each a list of steps run by the same executor class:

1. filter     (tasks)        read rows -> filters -> decont -> intermediate shards, doc index, MinHash signatures
2. reference  (tasks)        read reference rows -> doc index, MinHash signatures (never filtered or removed)
3. buckets    (num_buckets)  MinhashDedupBuckets: candidate pairs per LSH bucket
4. decide     (1)            MinhashDedupCluster + our Decide: which synthetic docs go, per rank
5. write      (tasks)        intermediate shards -> ApplyDecisions -> kept rows in DOC_SCHEMA

Every filter's rejects go to `rejected/` with their reason. Datatrove's per-task completion
markers (under `<work>/logs/<job>/completions`) make a rerun or a retried Ray task skip finished work.

The work folder (`work_folder`) holds every intermediate file. Every worker must reach it, so on
several nodes it is the output's `_work/` (or `executor.work_dir`); when the output is on an object
store and every worker runs on this machine, it is a scratch folder on this machine's disk, so the
store sees only the inputs read and the outputs written, not thousands of small intermediate objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from factory.core.errors import FactoryError
from factory.curate.config import CurateConfig

WORK = "_work"


@dataclass
class Job:
    name: str
    steps: list[Any]
    tasks: int
    skip: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def filter_steps(cfg: CurateConfig, rejected: str, index_dir: str | None) -> list[Any]:
    """The filter and decontamination steps, in order (`registry.FILTERS`), each with its own
    exclusion writer."""
    from factory.curate.decont import Decontaminate
    from factory.curate.filters import EmptyFilter
    from factory.curate.io import RejectWriter, SharedTokenizer
    from factory.curate.registry import Build

    tok = SharedTokenizer(cfg.language)
    b = Build(cfg, lambda reason: RejectWriter(rejected, reason), tok)
    steps: list[Any] = [EmptyFilter(b.writer("empty")), *cfg.filters.steps(b)]
    if index_dir is not None:
        steps.append(Decontaminate(index_dir, cfg.decont.n_grams, cfg.decont.action, tok,
                                   exclusion_writer=b.writer("contamination")))
    return steps


def on_store(url: str) -> bool:
    from factory.core.stage import OBJECT_STORES

    return url.split("://", 1)[0] in OBJECT_STORES


def folder(url: str, defer: bool = True) -> Any:
    """A folder for datatrove steps: on an object store a WorkFolder (factory.curate.workfolder: a
    task's files staged locally and uploaded together when it ends, whole-object reads, no
    `makedirs`); elsewhere the URL as is. `defer=False` (the logs): each file uploaded when closed."""
    from factory.curate.workfolder import WorkFolder

    return WorkFolder(url, defer=defer) if on_store(url) else url


def one_machine(cfg: CurateConfig) -> bool:
    """True when every worker of this run is a process of this machine: the local executor, or Ray
    started here without an address (a Ray reached by address may span, or gain, other nodes)."""
    if not cfg.executor.use_ray:
        return True
    if cfg.executor.ray_address or os.environ.get("RAY_ADDRESS"):
        return False
    import ray

    return not ray.is_initialized() or sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def work_folder(cfg: CurateConfig, out_url: str) -> tuple[str, bool]:
    """The URL of the run's work folder, and whether it is this machine's scratch (see the module doc)."""
    from factory.core.schema import sha
    from factory.core.stage import OBJECT_STORES
    from factory.teacher.cache import spool_root

    if cfg.executor.work_dir:
        return cfg.executor.work_dir.rstrip("/"), False
    if out_url.split("://", 1)[0] not in OBJECT_STORES or not one_machine(cfg):
        return f"{out_url}/{WORK}", False
    return str(spool_root() / "curate" / sha(out_url, cfg.output_hash_view(), n=16)), True


def compile_jobs(cfg: CurateConfig, inputs: list[tuple[str, list[str]]], refs: list[tuple[str, list[str]]],
                 work: str, index_dir: str | None) -> list[Job]:
    """The five datatrove jobs for this config (intermediate files under the work folder URL `work`)."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )

    from factory.curate.dedup import ApplyDecisions, Decide, DocIndex, OffsetSignature, VerifyPairs
    from factory.curate.io import DocWriter, RankJsonlReader, RejectWriter, SharedTokenizer, doc_reader, work_writer

    def at(name: str) -> Any:  # a work folder, as datatrove steps take it
        return folder(f"{work}/{name}")

    rejected = at("rejected")
    mh = cfg.dedup.minhash
    mcfg = MinhashConfig(n_grams=mh.n_grams, num_buckets=mh.num_buckets, hashes_per_bucket=mh.hashes_per_bucket,
                         seed=mh.seed)
    tasks = cfg.executor.tasks
    tok = SharedTokenizer(cfg.language)
    readers = [doc_reader(files, root) for root, files in inputs]
    sig = [MinhashDedupSignature(at("sigs"), config=mcfg, language=tok)] if mh.enabled else []
    filter_job = readers + filter_steps(cfg, rejected, index_dir) + [
        work_writer(at("filtered")), DocIndex(at("index")), *sig]
    ref_job = [doc_reader(files, root) for root, files in refs] + [DocIndex(at("index"), prefix="ref-", snippets=True)]
    if mh.enabled:
        ref_job.append(OffsetSignature(at("sigs"), config=mcfg, language=tok))
    decide = []
    if mh.enabled:
        dups = at("dups")
        if mh.threshold > 0:
            decide.append(VerifyPairs(at("sigs"), dups, at("dups_verified"), mh.num_buckets,
                                      mh.hashes_per_bucket, mh.threshold, mh.reference_threshold))
            dups = at("dups_verified")
        decide.append(MinhashDedupCluster(dups, at("clusters"), config=mcfg, save_cluster_id=True))
    decide.append(Decide(at("index"), at("clusters") if mh.enabled else None, at("decide"),
                         exact=cfg.dedup.exact))
    dedup_on = mh.enabled or cfg.dedup.exact
    jobs = [
        Job("filter", filter_job, tasks),
        Job("reference", ref_job, tasks, skip=not refs or not dedup_on),
        # each signature file read whole (lines_to_buffer=-1), not 5 lines a request: one GET per file on a store
        Job("buckets", [MinhashDedupBuckets(at("sigs"), at("dups"), config=mcfg, lines_to_buffer=-1)], mh.num_buckets,
            skip=not mh.enabled),
        Job("decide", decide, 1, skip=not dedup_on),
        Job("write", [RankJsonlReader(at("filtered")),
                      ApplyDecisions(at("decide"), RejectWriter(rejected, "dedup")), DocWriter(at("kept"))],
            tasks),
    ]
    if on_store(work):  # each task's staged files go up together before its completion marker (workfolder.py)
        from factory.curate.workfolder import Publish

        for job in jobs:
            job.steps.append(Publish())
    return jobs


SMALL = 3000  # below this many input documents, auto workers run the tasks in-process, one after another


def _workers(cfg: CurateConfig, tasks: int, n_docs: int, ray_cpus: int = 0) -> int:
    """Tasks at once. -1: local, one in-process worker for small inputs, else one per CPU; on Ray,
    the cluster's CPUs (at least this machine's, so an autoscaler sees the demand) per task."""
    w = cfg.executor.workers
    if w == -1:
        if cfg.executor.use_ray:
            w = max(ray_cpus, os.cpu_count() or 1) // cfg.executor.cpus_per_task
        else:
            w = 1 if n_docs < SMALL else (os.cpu_count() or 1)
    return max(1, min(w, tasks))


def _ray_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0


def make_executor(cfg: CurateConfig, job: Job, logs: str, n_docs: int = SMALL, ray_cpus: int = 0):
    ex = cfg.executor
    workers = _workers(cfg, job.tasks, n_docs, ray_cpus)
    if ex.use_ray:
        from factory.curate.raysession import ray_executor_class

        RayPipelineExecutor = ray_executor_class()
        per_job = ex.tasks_per_job or -(-job.tasks // workers)
        return RayPipelineExecutor(job.steps, tasks=job.tasks, workers=workers, logging_dir=logs,
                                   cpus_per_task=ex.cpus_per_task, mem_per_cpu_gb=ex.mem_per_cpu_gb,
                                   tasks_per_job=per_job)
    from factory.curate.logs import QuietLocalExecutor

    return QuietLocalExecutor(job.steps, tasks=job.tasks, workers=workers, logging_dir=logs)


def run_jobs(cfg: CurateConfig, jobs: list[Job], work: str, on_job: Callable[[str, float], None] | None = None,
             n_docs: int = SMALL) -> None:
    """Run the jobs in order (on Ray: on one WorkerPool for them all); a job that leaves tasks
    unfinished stops the run with a clear error. `work` is the work folder's URL."""
    import time
    from contextlib import nullcontext

    from factory.core.stage import forget_listings

    todo = [j for j in jobs if not j.skip]
    ex = cfg.executor
    cpus = _ray_cpus() if ex.use_ray else 0
    if ex.use_ray and todo:
        from factory.curate.raypool import WorkerPool

        pool = WorkerPool(max(_workers(cfg, j.tasks, n_docs, cpus) for j in todo), ex.cpus_per_task, ex.mem_per_cpu_gb)
    else:
        pool = nullcontext()
    with pool:
        for job in todo:
            t0 = time.time()
            forget_listings()  # the previous job's files were written by other processes
            executor = make_executor(cfg, job, folder(f"{work}/logs/{job.name}", defer=False), n_docs, cpus)
            if ex.use_ray:
                executor.run_on(pool)
            else:
                executor.run()
            forget_listings()
            left = executor.get_incomplete_ranks(skip_completed=True)
            if left:
                raise FactoryError(f"curation job '{job.name}' left {len(left)} of {job.tasks} tasks unfinished "
                                   f"(ranks {left[:8]})", where=f"{work}/logs/{job.name}",
                                   fix="read the task logs there; rerun the same command to resume")
            if on_job:
                on_job(job.name, time.time() - t0)
