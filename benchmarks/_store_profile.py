"""What a stage asks of an object store: requests by kind (PUT, GET, HEAD, LIST, DELETE, multipart) and
bytes each way, counted at a proxy in front of the S3-compatible server, and what they were for
(the first folder of the key below the stage's own folder: cache/, data/, _work's sigs/, ...).

The proxy is the test suite's fault-injecting one (tests/storage/flaky_store.py) with no faults set:
every process of a run (the driver, Ray workers, datatrove's tasks) reaches the store through it,
so nothing is missed. It costs a hop per request, so the storage benchmark counts in a run of its
own and times its rounds without it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from tests.storage.flaky_store import FlakyStore


def op_of(method: str, target: str) -> str:
    """The S3 operation of one request (by method and query)."""
    path, _, query = target.partition("?")
    if method == "GET":
        return "LIST" if ("list-type" in query or "prefix=" in query or path.count("/") <= 1) else "GET"
    if method == "POST":
        return "DELETE" if "delete" in query else "MULTIPART"
    if method == "PUT" and "uploadId" in query:
        return "MULTIPART"
    return method


_NUM = re.compile(r"\d+")


def purpose(target: str, depth: int) -> str:
    """What a request was for: the key's parts below the bucket and `depth` folders (the stage's own),
    its first folder or, for a file at the top, its name with digits as '#'. A listing names its prefix."""
    path, _, query = target.partition("?")
    parts = [p for p in path.split("/") if p][1:]  # without the bucket
    m = re.search(r"prefix=([^&]*)", query)
    if m and not parts:
        from urllib.parse import unquote

        parts = [p for p in unquote(m.group(1)).split("/") if p]
    rest = parts[depth:]
    if not rest:
        return "(stage folder)"
    head = rest[0] if len(rest) > 1 else _NUM.sub("#", rest[0])
    if head in ("_work",) and len(rest) > 2:
        head = f"_work/{rest[1]}"
    return head


class CountingStore(FlakyStore):
    """The fault proxy with no faults, counting every request by phase, operation and purpose."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.phase, self.depth = "", 1
        self.ops: dict[str, Counter] = defaultdict(Counter)
        self.bytes: dict[str, Counter] = defaultdict(Counter)
        self.what: dict[str, Counter] = defaultdict(Counter)

    async def _handle(self, request: Any) -> Any:
        resp = await super()._handle(request)
        op = op_of(request.method, request.raw_path)
        up = int(request.headers.get("Content-Length") or 0) if request.method in ("PUT", "POST") else 0
        down = int(resp.headers.get("Content-Length") or 0) if request.method == "GET" else 0
        with self._lock:
            self.ops[self.phase][op] += 1
            self.bytes[self.phase]["put"] += up
            self.bytes[self.phase]["get"] += down
            self.what[self.phase][f"{op} {purpose(request.raw_path, self.depth)}"] += 1
        return resp

    def report(self, phase: str, docs: int) -> dict[str, Any]:
        """The counts of `phase`, and per 1,000 documents."""
        per = 1000 / max(1, docs)
        ops, b = self.ops[phase], self.bytes[phase]
        return {"docs": docs, "requests": sum(ops.values()), "by_op": dict(sorted(ops.items())),
                "bytes_put": b["put"], "bytes_get": b["get"],
                "per_1000_docs": {"requests": round(sum(ops.values()) * per, 1),
                                  **{k: round(v * per, 1) for k, v in sorted(ops.items())},
                                  "mb_put": round(b["put"] * per / 1e6, 3), "mb_get": round(b["get"] * per / 1e6, 3)},
                "top": dict(self.what[phase].most_common(12))}
