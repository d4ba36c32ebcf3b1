"""OpenAI Batch API mode: the same shards, outputs and cache, paid at batch prices.

Recipes can have several steps, so requests are not known up front. Each round runs every open
shard with a `complete` that answers from the cache and *records* every miss (raising Deferred);
the misses go up as one JSONL batch (files.create + batches.create), the driver polls until the
batch ends, and the answers land in the per-shard caches. The next round replays the recipes,
gets further (a later step now sees its earlier outputs), and shards with nothing missing are
written. The open batch's id is saved under `<out>/batches/open.json` before polling, so a driver
that dies resumes polling the same batch instead of paying for it twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import openai

from factory.core.stage import StageDir
from factory.generate.shard import process_shard
from factory.teacher.cache import CompletionCache, SeedCache, request_key, shard_file
from factory.teacher.client import TeacherClient
from factory.teacher.config import TeacherConfig
from factory.teacher.http import TRANSIENT_STATUS
from factory.teacher.types import Completion, Deferred, TeacherError

DONE = {"completed", "failed", "expired", "cancelled"}
OPEN = "batches/open.json"


class Recorder:
    """The `complete` of one shard in batch mode: cache hit, known failure, or recorded miss."""

    def __init__(self, client: TeacherClient, cache: SeedCache, shard: int, pending: dict, failed: dict, fresh: set):
        self.client, self.cache, self.shard = client, cache, shard
        self.pending, self.failed, self.fresh = pending, failed, fresh

    async def __call__(self, messages: list[dict], sampling: dict | None = None, sample: int = 0) -> Completion:
        c = self.client
        samp = c.sampling_for(sampling)
        key = request_key(c.model_id, messages, samp, sample, c.cfg.seed)
        hit = self.cache.get(key)
        if hit is not None:
            if key in self.fresh:  # paid in this run's batches: account it as a request once
                self.fresh.discard(key)
                c.count("requests")
                c.count("prompt_tokens", hit.prompt_tokens)
                c.count("completion_tokens", hit.completion_tokens)
                c.count("cost", c.cfg.price.cost(hit.prompt_tokens, hit.completion_tokens))
                return Completion(**{**hit.to_dict(), "cached": False})
            c.count("cache_hits")
            return hit
        if key in self.failed:
            reason, detail = self.failed[key]
            raise TeacherError(reason, detail, retryable=False)
        body = {"model": c.cfg.endpoints[0].model, "messages": messages, **samp}
        seed = c.request_seed(key)
        if seed is not None:
            body.setdefault("seed", seed)
        self.pending[key] = (self.shard, body, self.cache.seed)
        raise Deferred(key)


def _completion(body: dict[str, Any], model: str) -> Completion:
    ch = body["choices"][0]
    text = ch["message"]["content"]
    if not isinstance(text, str):
        raise ValueError("no message content")
    u = body.get("usage") or {}
    return Completion(text=text, finish_reason=ch.get("finish_reason") or "stop", prompt_tokens=int(u.get("prompt_tokens") or 0),
                      completion_tokens=int(u.get("completion_tokens") or 0), model=body.get("model") or model)


def run_batch(tcfg: TeacherConfig, shards: dict[int, list[dict]], recipes: list[Any], samples: int, stage: StageDir,
              cache_dir: str, concurrency: int | None) -> dict[str, Any]:
    ep = tcfg.endpoints[0]
    from factory.teacher.http import credentials

    key = ep.api_key()  # the endpoint's own credentials header (Bearer or e.g. api-key), its headers and query
    api = openai.OpenAI(base_url=ep.base_url, api_key=key or "none", max_retries=5, timeout=tcfg.timeout_s,
                        default_headers={**ep.headers, **credentials(ep, key)}, default_query=ep.query or None)
    client = TeacherClient(tcfg)
    failed: dict[str, tuple[str, str]] = {}
    fresh: set[str] = set()
    open_shards = dict(shards)
    results: dict[int, dict] = {}
    info: Counter[str] = Counter()
    caches = {k: CompletionCache(shard_file(cache_dir, k)) for k in shards}
    try:
        if stage.exists(OPEN):  # a batch a previous driver left running: collect it first
            with stage.fs.open(stage.path(OPEN)) as f:
                st = json.loads(f.read())
            _collect(api, st, caches, failed, fresh, info, tcfg)
            stage.fs.rm(stage.path(OPEN))
        for rnd in range(tcfg.batch.max_rounds + 1):
            pending: dict[str, tuple[int, dict, str]] = {}

            async def one_round() -> None:
                for k in sorted(open_shards):
                    res = await process_shard(k, open_shards[k], recipes, samples, client, stage, cache_dir, concurrency,
                                              complete_factory=lambda cache, k=k: Recorder(client, cache, k, pending,
                                                                                           failed, fresh))
                    if "deferred" not in res:
                        results[k] = res
                        del open_shards[k]

            asyncio.run(one_round())
            if not pending or rnd == tcfg.batch.max_rounds:
                break
            lines = [json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body})
                     for key, (_, body, _) in sorted(pending.items())]
            up = api.files.create(file=(f"round-{rnd}.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
            batch = api.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions",
                                       completion_window=tcfg.batch.completion_window)
            st = {"batch_id": batch.id, "shards": {key: k for key, (k, _, _) in pending.items()},
                  "seeds": {key: seed for key, (_, _, seed) in pending.items()}}
            stage.write_json(OPEN, st)
            info["batches"] += 1
            info["batch_requests"] += len(lines)
            _collect(api, st, caches, failed, fresh, info, tcfg)
            stage.fs.rm(stage.path(OPEN))
    finally:
        for c in caches.values():
            c.close()
        api.close()
    acc = {k: sum(r.get(k, 0) for r in results.values()) for k in ("requests", "retries", "cache_hits", "prompt_tokens",
                                                                   "completion_tokens", "docs", "units")}
    acc["cost"] = round(sum(r.get("cost", 0) for r in results.values()), 6)
    acc.update(dict(info), shards_run=sorted(results),
               failed_shards=[{"shard": k, "error": "requests still unanswered after the last batch round"} for k in sorted(open_shards)])
    return acc


def _collect(api: openai.OpenAI, st: dict, caches: dict[int, CompletionCache], failed: dict, fresh: set,
             info: Counter, tcfg: TeacherConfig) -> None:
    """Poll the batch until it ends, then merge its answers into the caches."""
    while True:
        b = api.batches.retrieve(st["batch_id"])
        if b.status in DONE:
            break
        time.sleep(tcfg.batch.poll_s)
    info[f"batch_{b.status}"] += 1
    for fid in (b.output_file_id, b.error_file_id):
        if not fid:
            continue
        for line in api.files.content(fid).text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            key = rec.get("custom_id")
            k = st["shards"].get(key)
            if k is None or k not in caches:
                continue
            resp = rec.get("response") or {}
            status = int(resp.get("status_code") or 0)
            if status == 200:
                try:
                    caches[k].put(key, _completion(resp["body"], tcfg.endpoints[0].model), seed=st.get("seeds", {}).get(key))
                    fresh.add(key)
                    continue
                except (KeyError, IndexError, TypeError, ValueError):
                    info["batch_malformed"] += 1  # retried in the next round
                    continue
            if status and status not in TRANSIENT_STATUS and status < 500:
                err = (resp.get("body") or {}).get("error") or rec.get("error") or {}
                failed[key] = (f"http_{status}", json.dumps(err)[:500])
            else:
                info["batch_retryable_errors"] += 1  # left pending: the next round asks again
