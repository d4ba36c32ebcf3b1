"""The generate stage on object storage (a real S3-compatible server): outputs and the request
cache on the store, nothing on local disk, resume and shared-cache adoption from there."""

from __future__ import annotations

import fsspec
import pytest
from gen_helpers import gen_cfg, request_keys

from factory.core.stage import StageDir
from factory.generate import run


@pytest.mark.slow
def test_generate_to_s3_resumes_from_the_store(teacher, ray_local, seeds_file, tmp_path, s3_bucket):
    local_seeds = seeds_file(6)
    ref = run(gen_cfg(local_seeds, tmp_path / "ref", teacher.endpoints, teacher.model), show_progress=False)
    out = f"{s3_bucket}/gen"
    cfg = gen_cfg(local_seeds, out, teacher.endpoints, teacher.model, cache_flush_every=2)
    m = run(cfg, show_progress=False)
    assert m["status"] == "done" and StageDir.read_manifest(out)["status"] == "done"
    assert request_keys(out) == request_keys(tmp_path / "ref") and m["counts"] == ref["counts"]
    # which node ran which shard: every shard once
    assert sorted(s for n in m["nodes"].values() for s in n["shards"]) == [0, 1, 2]
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    segs = fs.glob(f"{root}/cache/layout-*/shard-*/seg-*.jsonl")
    assert segs and sum(len(fs.cat_file(s).splitlines()) for s in segs) == m["accounting"]["requests"] == 6
    # a shard lost from the store is redone from the cache on the store: no teacher call
    fs.rm(f"{root}/data/train-shard-00001.parquet")
    m2 = run(cfg, show_progress=False)
    assert m2["this_run"]["requests"] == 0 and m2["this_run"]["cache_hits"] == 2
    assert request_keys(out) == request_keys(tmp_path / "ref")
    # seeds read from the store, another output, the same cache: all adopted, nothing paid
    fs.put(local_seeds, f"{root}/seeds.jsonl")
    m3 = run(gen_cfg(f"{out}/seeds.jsonl", f"{s3_bucket}/gen2", teacher.endpoints, teacher.model, shards=2,
                     cache_dir=f"{out}/cache"), show_progress=False)
    assert m3["this_run"]["cache_adopted"] == 6 and m3["this_run"]["requests"] == 0 and m3["counts"]["docs"] == 6


@pytest.mark.slow
def test_a_late_writer_does_not_replace_a_finished_shard(teacher, ray_local, seeds_file, s3_bucket):
    """A worker that finishes a shard someone else already wrote (a node back from a partition, a
    retried task) leaves the first copy alone."""
    import asyncio

    from factory.generate import load_seeds, split, teacher_config
    from factory.generate.shard import process_shard
    from factory.recipes import load_recipe
    from factory.teacher.client import TeacherClient

    out = f"{s3_bucket}/late"
    cfg = gen_cfg(seeds_file(4), out, teacher.endpoints, teacher.model, shards=2)
    run(cfg, show_progress=False)
    fs, root = fsspec.core.url_to_fs(out)
    before = fs.cat_file(f"{root}/data/train-shard-00000.parquet"), fs.info(f"{root}/data/train-shard-00000.parquet")["LastModified"]
    stage = StageDir(out, "generate", StageDir.read_manifest(out)["config"])
    rows = split(load_seeds(cfg)[0], 2)[0]

    async def late() -> dict:
        client = TeacherClient(teacher_config(cfg))
        await client.start(probe=False)
        try:
            return await process_shard(0, rows, [load_recipe(r) for r in cfg.recipes], 1, client, stage,
                                       f"{s3_bucket}/elsewhere-cache", 2)
        finally:
            await client.close()

    stats = asyncio.run(late())
    assert stats["late"] is True
    fs.invalidate_cache()
    assert (fs.cat_file(f"{root}/data/train-shard-00000.parquet"), fs.info(f"{root}/data/train-shard-00000.parquet")["LastModified"]) == before
