"""An LLM judge as a datatrove step: each document and its seed go to a judge model through the same
OpenAI-compatible teacher client as generation, with a rubric; the verdict is cached, so a rerun
pays nothing again.

The rubric is a Jinja template over `document`, `seed` and `recipe` whose reply ends with a line
`Score: N` (1-5). The score goes to `meta.extra.judge`; below `min_score` the document is rejected.
A reply without a score keeps the document (`meta.extra.judge: null`) unless `on_unparsed: drop`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from factory.curate.chatter import record_extra
from factory.curate.faithful import SeedTexts
from factory.curate.filters import Step, _meta
from factory.curate.io import reject

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])\b", re.IGNORECASE)


def parse_score(text: str) -> int | None:
    """The last `Score: N` in a judge's reply, or None."""
    found = _SCORE.findall(text or "")
    return int(found[-1]) if found else None


class JudgeFilter(Step):
    name = reason = "judge"

    def __init__(self, teacher: dict[str, Any], rubric: str, min_score: int, cache_dir: str, seeds: list[str],
                 on_unparsed: str = "keep", batch: int = 8, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.batch_size = batch
        self.teacher, self.rubric, self.min_score = dict(teacher), rubric, min_score
        self.cache_dir, self.on_unparsed = cache_dir, on_unparsed
        self.seeds = SeedTexts(seeds)
        self._rank = 0

    def run(self, data, rank: int = 0, world_size: int = 1):
        self._rank = rank
        yield from super().run(data, rank, world_size)

    def messages(self, doc) -> list[dict[str, str]]:
        from jinja2 import Environment, StrictUndefined

        meta = _meta(doc)
        tpl = Environment(undefined=StrictUndefined).from_string(self.rubric)
        return [{"role": "user", "content": tpl.render(document=doc.text, seed=self.seeds.get(meta.get("seed_id")) or "",
                                                        recipe=meta.get("recipe") or "")}]

    def filter(self, doc):
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch):
        from factory.teacher.cache import CompletionCache, shard_file
        from factory.teacher.client import TeacherClient
        from factory.teacher.config import TeacherConfig

        cfg = TeacherConfig.model_validate(self.teacher)
        cache = CompletionCache(shard_file(self.cache_dir, self._rank))

        client = TeacherClient(cfg, cache, where="filters.judge.teacher")
        msgs = [self.messages(d) for d in batch]
        done = [cache.get(client.key(m)) for m in msgs]  # a rerun judged everything already: no server needed
        todo = [i for i, c in enumerate(done) if c is None]

        async def judge(idx: list[int]) -> list[Any]:
            try:
                return await asyncio.gather(*(client.complete(msgs[i]) for i in idx))
            finally:
                await client.close()

        try:
            if todo:
                for i, c in zip(todo, asyncio.run(judge(todo))):
                    done[i] = c
        finally:
            cache.close()
        replies = [c.text for c in done]
        out = []
        for doc, reply in zip(batch, replies):
            score = parse_score(reply)
            record_extra(doc, judge=score)
            if score is None:
                out.append(True if self.on_unparsed == "keep" else reject(doc, self.reason, "no score in: " + reply[:200]))
            elif score < self.min_score:
                out.append(reject(doc, self.reason, f"score {score} < {self.min_score}: {reply[-200:]}"))
            else:
                out.append(True)
        return out
