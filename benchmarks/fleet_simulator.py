"""A fleet simulator: OpenAI-compatible HTTP servers on loopback that behave like continuous-
batching replicas (vLLM / SGLang), for tests and benchmarks. Not a model: it answers with filler
words after the time a real replica would take.

Each simulated replica has its own port and its own engine:
- a scheduler step runs every sequence in the batch (at most `max_batch`, vLLM's max_num_seqs)
  one decode token forward, and prefills newly admitted prompts within a `token_budget` of
  tokens per step (vLLM's max_num_batched_tokens, chunked prefill);
- a step lasts `step_s + per_seq_s * batch + prefill_per_token_s * prefill tokens`;
- a sequence is admitted only when the KV cache (`kv_tokens`) holds its prompt and its whole
  output; the rest wait in a queue of at most `max_queue` requests, beyond which the replica
  answers 429 with Retry-After;
- optional prefix-cache hits: a prompt whose first 200 characters were seen before prefills
  only (1 - `prefix_cache`) of its tokens;
- `speed` runs simulated time that much faster than the wall clock (a fast token rate).
Output lengths: `output="max"` gives every request its max_tokens; "mixed" draws a per-request
length log-uniformly in [16, max_tokens] (deterministic from the prompt, so runs compare).
HTTP: by default an aiohttp web app per replica; `http="fast"` puts the same engines behind the
minimal HTTP/1.1 keep-alive server of benchmarks/_stub_server.py (no request and response
objects, no router: a few times less CPU per request), for runs where the simulator's own CPU
would take the client's share of a small machine (the million-request benchmark). The engine,
its timing model, the 429s and the client hanging up mid-request (its sequence is dropped)
behave the same in both.

Calibration (the defaults): Llama-3.1-8B-Instruct in BF16 on one A100-40GB under vLLM, from a
published concurrency sweep (johnmusgrave.com, "vLLM throughput-latency sweep on NVIDIA A100",
vllm bench serve, 1024 input / 128 output tokens): ~75 tokens/s for one request (a 13.3 ms step)
and 6.6x that at 8 concurrent requests with latency almost flat (-> 0.41 ms per extra sequence
in the batch), throughput still rising past 64 while per-token latency climbs. Prefill at
~0.08 ms per token is what an 8B model's 16 GFLOP per token costs at ~200 TFLOP/s. max_batch 256
and token_budget 8192 are vLLM's defaults; the KV cache of a 40 GB card after 16 GB of weights
holds about 180k tokens at 128 KiB per token. Throughput then grows with the batch until the KV
cache or max_batch caps it, the shape vLLM's v0.6.0 performance report shows.

    with FleetSimulator(replicas=4, speed=20, output="mixed") as fleet:
        fleet.urls       # ["http://127.0.0.1:PORT/v1", ...]
        fleet.stats()    # per replica: served, rejected, completion tokens, peak batch and queue
        fleet.configure(0, fail=1.0)   # replica 0 answers 503 to everything (until fail=0)
    python benchmarks/fleet_simulator.py --replicas 32 --speed 50    # by hand
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import heapq
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

try:
    from benchmarks._stub_server import ChildServer, _Conn, die_with_parent
except ImportError:  # imported or run from benchmarks/
    from _stub_server import ChildServer, _Conn, die_with_parent  # type: ignore[no-redef]

MODEL = "sim-llama-8b"
_VOCAB = ("the of a river light stone market winter signal theory garden engine number people field "
          "history moment water cell story energy pattern method island letter value circle").split()
_FILLER = " ".join(_VOCAB[(i * 7 + i // 25) % len(_VOCAB)] for i in range(4096))


@dataclass
class ReplicaModel:
    """One replica's parameters (see the module docstring for where the defaults come from)."""

    max_batch: int = 256
    token_budget: int = 8192
    kv_tokens: int = 180_000
    step_s: float = 0.0133
    per_seq_s: float = 0.00041
    prefill_per_token_s: float = 0.00008
    max_queue: int = 1024
    retry_after_s: float = 1.0
    prefix_cache: float = 0.0
    speed: float = 1.0
    output: str = "max"
    fail: float = 0.0  # fraction of requests answered 503 at once (a sick replica)


class _Seq:
    __slots__ = ("prompt", "out", "fut", "done_at")

    def __init__(self, prompt: int, out: int, fut: asyncio.Future):
        self.prompt, self.out, self.fut, self.done_at = prompt, out, fut, 0


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Replica:
    """The engine of one simulated replica: a queue, a running batch and a scheduler loop."""

    def __init__(self, m: ReplicaModel):
        self.m = m
        self.waiting: collections.deque[_Seq] = collections.deque()
        self.running: list[tuple[int, int, _Seq]] = []  # heap by the decode step the sequence ends at
        self.steps = 0  # decode steps so far
        self.kv_used = 0
        self.wake: asyncio.Future | None = None  # set by an arrival while the loop naps
        self.prefixes: set[bytes] = set()
        self.ids = itertools.count()
        self.st = collections.Counter()
        self.task = asyncio.get_running_loop().create_task(self.loop())

    def out_tokens(self, key: bytes, max_tokens: int) -> int:
        if self.m.output != "mixed" or max_tokens <= 16:
            return max_tokens
        u = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") / 2**32
        return max(1, int(16 * (max_tokens / 16) ** u))

    def submit(self, prompt_text: str, max_tokens: int) -> tuple[asyncio.Future, int, int] | None:
        """Queue a request; None when the queue is full (the caller answers 429)."""
        if len(self.waiting) >= self.m.max_queue:
            self.st["rejected_429"] += 1
            return None
        key = prompt_text.encode()
        prompt = max(1, len(prompt_text) // 4)
        out = self.out_tokens(key, max_tokens)
        cost = prompt
        if self.m.prefix_cache:
            head = hashlib.blake2b(key[:200], digest_size=8).digest()
            if head in self.prefixes:
                cost = max(1, int(prompt * (1 - self.m.prefix_cache)))
                self.st["prefix_hits"] += 1
            else:
                self.prefixes.add(head)
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(_Seq(cost, out, fut))
        self.st["max_waiting"] = max(self.st["max_waiting"], len(self.waiting))
        if self.wake is not None:
            _wake(self.wake)
        return fut, prompt, out

    def _admit(self) -> int:
        """Move queued sequences into the batch; returns the prompt tokens to prefill this step."""
        m, prefill = self.m, 0
        while self.waiting and len(self.running) < m.max_batch:
            s = self.waiting[0]
            if s.fut.done():  # the client gave up (timeout, disconnect) while it waited
                self.waiting.popleft()
                continue
            if prefill and prefill + s.prompt > m.token_budget:
                break
            need = s.prompt + s.out
            if self.running and self.kv_used + need > m.kv_tokens:
                break
            self.waiting.popleft()
            prefill += s.prompt
            self.kv_used += need
            s.done_at = self.steps + s.out
            heapq.heappush(self.running, (s.done_at, next(self.ids), s))
        self.st["max_batch"] = max(self.st["max_batch"], len(self.running))
        return prefill

    async def nap(self, timeout: float | None) -> None:
        """Until an arrival or `timeout` seconds (a future and a timer: cheaper than wait_for on an event)."""
        loop = asyncio.get_running_loop()
        self.wake = fut = loop.create_future()
        timer = loop.call_later(timeout, _wake, fut) if timeout is not None else None
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            self.wake = None

    async def loop(self) -> None:
        m, clock = self.m, asyncio.get_running_loop().time
        while True:
            prefill = self._admit()
            if not self.running:
                await self.nap(None)
                continue
            step = m.step_s + m.per_seq_s * len(self.running)
            k = self.running[0][0] - self.steps  # steps until the next sequence ends
            room = len(self.running) < m.max_batch
            if self.waiting and room:
                k = 1
            extra = prefill * m.prefill_per_token_s
            t0 = clock()
            if room and k > 1:  # an arrival may join at the next step boundary
                await self.nap((k * step + extra) / m.speed)
                sim = (clock() - t0) * m.speed - extra
                done = min(k, max(1, math.ceil(sim / step - 1e-9)))
                rest = (done * step + extra) / m.speed - (clock() - t0)
                if rest > 0:
                    await asyncio.sleep(rest)
            else:
                done = k
                await asyncio.sleep((k * step + extra) / m.speed)
            self.steps += done
            self.st["busy_sim_s"] += done * step + extra
            while self.running and self.running[0][0] <= self.steps:
                _, _, s = heapq.heappop(self.running)
                self.kv_used -= s.prompt + s.out
                self.st["completion_tokens"] += s.out
                self.st["served"] += 1
                if not s.fut.done():
                    s.fut.set_result(None)


def _completion(req: dict[str, Any], prompt: int, out: int, n: int) -> bytes:
    start = (n * 37) % 2048
    words = _FILLER[start * 6:].split(" ", out + 1)[:max(1, int(out * 0.75))]
    fin = "length" if out >= int(req.get("max_tokens") or 0) > 0 else "stop"
    return json.dumps({
        "id": f"chatcmpl-sim-{n}", "object": "chat.completion", "created": int(time.time()),
        "model": req.get("model") or MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Note {n}: " + " ".join(words)},
                     "finish_reason": fin, "logprobs": None}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}}).encode()


MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "sim"}]}).encode()


def _error(message: str, **extra: str) -> bytes:
    return json.dumps({"error": {"message": message, **extra}}).encode()


def start_chat(replica: Replica, body: bytes) -> tuple[int, bytes, dict[str, str]] | tuple[asyncio.Future, Any]:
    """A chat request: (status, body, headers) to answer at once (400, 503, 429), or (future, build):
    answer with build() once the engine has finished the sequence."""
    try:
        req = json.loads(body)
        text = "\n".join(str(m.get("content", "")) for m in req["messages"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return 400, _error(f"bad request: {e}"), {}
    m = replica.m
    replica.st["requests"] += 1
    if m.fail and (replica.st["requests"] % 1000) < m.fail * 1000:
        replica.st["failed_503"] += 1
        return 503, _error("simulated replica failure"), {}
    sub = replica.submit(text, int(req.get("max_tokens") or 256))
    if sub is None:
        ra = m.retry_after_s / m.speed
        return 429, _error("queue full", type="rate_limit"), {"retry-after": str(max(1, math.ceil(ra))),
                                                              "retry-after-ms": str(int(ra * 1000))}
    fut, prompt, out = sub
    return fut, lambda: _completion(req, prompt, out, replica.st["served"])


def stats_of(replica: Replica) -> bytes:
    return json.dumps({**replica.st, "running": len(replica.running), "waiting": len(replica.waiting)}).encode()


def configure_with(replica: Replica, upd: dict[str, Any]) -> tuple[int, bytes]:
    bad = sorted(set(upd) - {f.name for f in fields(ReplicaModel)})
    if bad:
        return 400, _error(f"unknown parameters {bad}")
    for k, v in upd.items():
        setattr(replica.m, k, v)
    return 200, json.dumps(asdict(replica.m)).encode()


class _FastConn(_Conn):
    """A connection of the fast server: the sequence it waits for is dropped if the client hangs up."""

    def __init__(self, srv: "_FastReplica"):
        super().__init__(srv)
        self.waiting: asyncio.Future | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.waiting is not None and not self.waiting.done():
            self.waiting.cancel()


class _FastReplica:
    """One replica's routes on the minimal HTTP server (`http="fast"`)."""

    def __init__(self, replica: Replica):
        self.replica = replica

    def handle(self, conn: _FastConn, method: str, path: str, body: bytes, close: bool) -> None:
        path = path.split("?", 1)[0].rstrip("/")
        if method == "POST" and path == "/v1/chat/completions":
            started = start_chat(self.replica, body)
            if len(started) == 3:
                return conn.send(*started[:2], close, started[2])
            fut, build = started
            conn.waiting = fut

            def done(f: asyncio.Future) -> None:
                conn.waiting = None
                if not f.cancelled():
                    conn.send(200, build(), close)

            fut.add_done_callback(done)
            return None
        if method == "GET" and path == "/v1/models":
            return conn.send(200, MODELS, close)
        if method == "GET" and path == "/stats":
            return conn.send(200, stats_of(self.replica), close)
        if method == "POST" and path == "/configure":
            try:
                return conn.send(*configure_with(self.replica, json.loads(body)), close)
            except (ValueError, TypeError) as e:
                return conn.send(400, _error(f"bad request: {e}"), close)
        return conn.send(404, _error("not found"), close)


def make_app(replica: Replica):
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionResetError:  # the client went away mid-request
            return web.Response(status=499)
        started = start_chat(replica, body)
        if len(started) == 3:
            status, payload, headers = started
            return web.Response(body=payload, status=status, headers=headers, content_type="application/json")
        fut, build = started
        try:
            await fut
        except asyncio.CancelledError:  # the client went away: the sequence is dropped where it is
            fut.cancel()
            raise
        return web.Response(body=build(), content_type="application/json")

    async def model_list(request: web.Request) -> web.Response:
        return web.Response(body=MODELS, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=stats_of(replica), content_type="application/json")

    async def configure(request: web.Request) -> web.Response:
        status, payload = configure_with(replica, await request.json())
        return web.Response(body=payload, status=status, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024**2)
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", model_list),
                    web.get("/stats", stats), web.post("/configure", configure)])
    return app


async def serve(n: int, model: ReplicaModel, host: str = "127.0.0.1", ready=None, http: str = "aiohttp") -> None:
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # clients hanging up mid-request are normal here
    runners, ports = [], []
    for _ in range(n):
        replica = Replica(ReplicaModel(**asdict(model)))
        if http == "fast":
            fast = _FastReplica(replica)
            server = await asyncio.get_running_loop().create_server(lambda f=fast: _FastConn(f), host, 0, backlog=4096)
            runners.append(server)
            ports.append(server.sockets[0].getsockname()[1])
            continue
        app = make_app(replica)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, 0, backlog=4096)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])
    if ready:
        ready(ports)
    await asyncio.Event().wait()


class FleetSimulator(ChildServer):
    """The simulated replicas in a child process: `with FleetSimulator(replicas=8, speed=10) as f: f.urls`."""

    ready = "ports"

    def __init__(self, replicas: int = 1, http: str = "aiohttp", **model: Any):
        self.n, self.model = replicas, ReplicaModel(**model)
        super().__init__(__file__, ["--replicas", str(self.n), "--model", json.dumps(asdict(self.model)), "--http", http])

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}/v1" for p in self.ports]

    def _call(self, i: int, path: str, body: dict | None = None) -> dict[str, Any]:
        import httpx

        url = f"http://127.0.0.1:{self.ports[i]}{path}"
        r = httpx.post(url, json=body, timeout=10) if body is not None else httpx.get(url, timeout=10)
        r.raise_for_status()
        return r.json()

    def stats(self) -> list[dict[str, Any]]:
        return [self._call(i, "/stats") for i in range(self.n)]

    def configure(self, i: int, **params: Any) -> dict[str, Any]:
        """Change replica i's parameters while it runs (e.g. fail=1.0, max_queue=0)."""
        return self._call(i, "/configure", params)


def cli(argv: list[str] | None = None) -> int:  # not `main`: run_all.py runs every main()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default="{}", help="ReplicaModel fields as JSON")
    ap.add_argument("--http", choices=("aiohttp", "fast"), default="aiohttp")
    for f in fields(ReplicaModel):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    a = ap.parse_args(argv)
    params = json.loads(a.model)
    params.update({f.name: getattr(a, f.name) for f in fields(ReplicaModel) if getattr(a, f.name) is not None})
    die_with_parent()
    try:
        asyncio.run(serve(a.replicas, ReplicaModel(**params), a.host,
                          ready=lambda ps: print("ports " + ",".join(map(str, ps)), flush=True), http=a.http))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
