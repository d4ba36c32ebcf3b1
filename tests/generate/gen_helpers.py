"""Helpers for generation tests: seed rows and the test recipes."""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"


def seed_rows(n: int) -> list[dict]:
    from factory.core.schema import make_doc

    topics = ["volcano", "river", "piano", "comet", "forest", "bridge", "honey", "glacier", "desert", "violin",
              "harbor", "orchid", "lighthouse", "canyon", "owl", "meteor", "castle", "coral", "tundra", "kite"]
    rows = []
    for i in range(n):
        t = f"{topics[i % len(topics)]} {i}"
        rows.append(make_doc(f"A {t} is a thing people often describe in simple words. Item number {i}.", "web", "test",
                             seed_id=f"test:{t}", extra={"title": t.title(), "topic": "nature"}))
    return rows


def recipe(name: str) -> str:
    return str(RECIPES / f"{name}.yaml")


def request_keys(out) -> list[tuple[str, str, int]]:
    """(seed id, recipe, sample) of every document under `out`, sorted: which requests produced a
    document. Runs are compared by these, not by ids: ids hash the text, and a teacher's greedy
    output can change with request order (prefix reuse, batching), so two clean runs may differ."""
    from factory.core.schema import extra
    from factory.core.stage import read_docs

    rows = read_docs(str(out)).select(["meta"]).to_pylist()
    return sorted((r["meta"]["seed_id"], r["meta"]["recipe"], int(extra(r).get("sample", 0))) for r in rows)


def gen_cfg(seeds: str, out, urls, model, **kw):
    """A GenerateConfig for the test teacher(s) at `urls`, short retries, the tiny_fact recipe by default."""
    from factory.generate import GenerateConfig
    from factory.teacher.config import Endpoint, RetryPolicy, TeacherConfig

    tk = kw.pop("teacher_kw", {})
    tk.setdefault("retry", RetryPolicy(base_s=0.05, max_s=0.5, max_attempts=12))
    teacher = TeacherConfig(endpoints=[Endpoint(base_url=u, model=model, api_key_env="FACTORY_TEACHER_KEY") for u in urls], timeout_s=kw.pop("timeout_s", 30),
                            sampling={"temperature": 0.0}, **tk)
    kw.setdefault("recipes", [recipe("tiny_fact")])
    kw.setdefault("shards", 3)
    kw.setdefault("workers", 2)
    kw.setdefault("concurrency", 2)
    return GenerateConfig(seeds=seeds, out=str(out), teacher=teacher, **kw)
