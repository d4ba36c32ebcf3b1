"""The review server (aiohttp): a static page (index.html, app.js, app.css from this package) and
JSON endpoints that page through the index server-side.

Routes, and nothing else (no file is served by a path a request names):
  GET  /                 the page          GET /app.js, /app.css   its script and style
  GET  /api/summary      the funnel, filter choices, label counts, agreement, corrupt label lines
  GET  /api/docs         one page of entries: ?recipe= &teacher= &status= &reason= &label= &page= &size=
  GET  /api/doc?id=      one document beside its seed, with marks, notes and every reviewer's label
  POST /api/label        {"id", "label", "note"}: appended to labels.jsonl (a known id and label, else 400)

Bound to loopback, requests must name a loopback Host (no DNS rebinding). Bound elsewhere, every
request needs the token the server printed (`?token=`, the `X-Review-Token` header, or the
cookie the page gets with it): 401 without.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import threading
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from factory.core.errors import FactoryError
from factory.core.stage import is_url
from factory.review.data import STATUSES, Index, find_stages
from factory.review.labels import FILE, LABELS, MAX_NOTE, LabelStore, agreement

MAX_BODY = 16 * 1024
MAX_PAGE = 200
LABEL_FILTERS = ["unlabeled", "labeled", *LABELS]
COOKIE = "review_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def static_text(name: str) -> str:
    return resources.files("factory.review").joinpath("static", name).read_text()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BadRequest(Exception):
    pass


class Review:
    """A folder's index, its labels and the reviewer: what the endpoints answer from."""

    def __init__(self, folder: str, reviewer: str, labels: str | None = None):
        self.folder = str(folder).rstrip("/") or "/"
        self.stages = find_stages(self.folder)
        self.index = Index.build(self.stages)
        self.reviewer = reviewer
        path = labels or (None if is_url(self.folder) else f"{self.folder}/{FILE}")
        self.store = LabelStore(path) if path else None
        self._labels = None
        self._sig = None

    # labels, re-read when the file changed (another reviewer's server may append too)
    def labels(self):
        from factory.review.labels import Labels

        if self.store is None:
            return Labels()
        import os

        try:
            st = os.stat(self.store.path)
            sig = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            sig = None
        if sig != self._sig or self._labels is None:
            self._labels, self._sig = self.store.read(), sig
        return self._labels

    def summary(self) -> dict[str, Any]:
        ix, lab = self.index, self.labels()
        mine = lab.of(self.reviewer)
        return {
            "folder": self.folder, "kind": self.stages.kind, "reviewer": self.reviewer,
            "stages": {k: getattr(self.stages, k).url if getattr(self.stages, k) else None
                       for k in ("seeds", "generate", "curate")},
            "funnel": ix.funnel(),
            "options": {"recipe": ix.codes("recipe")[0], "teacher": ix.codes("teacher")[0],
                        "status": [s for s in STATUSES if s in set(ix.codes("status")[0])],
                        "reason": [r for r in ix.codes("reason")[0] if r], "label": LABEL_FILTERS},
            "labels": {"path": self.store.path if self.store else None, "lines": lab.lines,
                       "bad_lines": lab.bad_lines, "mine": sum(1 for d in mine if d in ix.pos),
                       "reviewers": {who: len(lab.of(who)) for who in lab.reviewers()},
                       "agreement": agreement(lab), "choices": list(LABELS)},
        }

    def page(self, q: dict[str, str]) -> dict[str, Any]:
        try:
            page, size = int(q.get("page", 0)), int(q.get("size", 50))
        except ValueError:
            raise BadRequest("page and size are whole numbers") from None
        if page < 0 or not 1 <= size <= MAX_PAGE:
            raise BadRequest(f"page >= 0 and 1 <= size <= {MAX_PAGE}")
        want = q.get("label", "")
        if want and want not in LABEL_FILTERS:
            raise BadRequest(f"label filter is one of {', '.join(LABEL_FILTERS)}")
        ix = self.index
        mine = self.labels().of(self.reviewer)
        only = exclude = None
        labeled = {ix.pos[d] for d in mine if d in ix.pos}
        if want == "unlabeled":
            exclude = labeled
        elif want == "labeled":
            only = labeled
        elif want:
            only = {ix.pos[d] for d, r in mine.items() if d in ix.pos and r["label"] == want}
        sel = ix.select(q.get("recipe", ""), q.get("status", ""), q.get("reason", ""), q.get("teacher", ""),
                        only=only, exclude=exclude)
        rows = []
        for i in sel[page * size:(page + 1) * size]:
            d = ix.doc(int(i), full=False)
            d["label"] = (mine.get(d["id"]) or {}).get("label")
            rows.append(d)
        return {"total": int(len(sel)), "page": page, "size": size, "rows": rows}

    def doc(self, doc_id: str) -> dict[str, Any] | None:
        i = self.index.pos.get(doc_id)
        if i is None:
            return None
        d = self.index.doc(i)
        d["labels"] = {who: {"label": r["label"], "note": r.get("note", ""), "time": r.get("time")}
                       for (doc, who), r in self.labels().latest.items() if doc == doc_id}
        return d

    def label(self, body: Any) -> dict[str, Any]:
        if self.store is None:
            raise BadRequest("labels are read-only here (a remote folder: give --labels PATH to write them)")
        if not isinstance(body, dict) or not set(body) <= {"id", "label", "note"}:
            raise BadRequest("send a JSON object with id, label and note only")
        doc, lab, note = body.get("id"), body.get("label"), body.get("note", "")
        if not isinstance(doc, str) or doc not in self.index.pos:
            raise BadRequest("unknown document id")
        if lab not in LABELS:
            raise BadRequest(f"label is one of {', '.join(LABELS)}")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise BadRequest(f"note is text of at most {MAX_NOTE} characters")
        return self.store.append(doc, lab, note, self.reviewer)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False, default=str),
                             headers={"Cache-Control": "no-store"})


def _hostname(host: str | None) -> str:
    try:
        return urlsplit("//" + (host or "")).hostname or ""
    except ValueError:
        return "?"


def make_app(review: Review, token: str | None = None, loopback: bool = True) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler):
        if token is not None:
            given = request.query.get("token") or request.headers.get("X-Review-Token") or request.cookies.get(COOKIE) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _json({"error": "a token is required: open the URL the server printed"}, 401)
        elif loopback and not is_loopback(_hostname(request.host)):
            return _json({"error": "this server answers requests for its loopback address only"}, 403)
        try:
            resp = await handler(request)
        except BadRequest as e:
            resp = _json({"error": str(e)}, 400)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp

    page, script, style = static_text("index.html"), static_text("app.js"), static_text("app.css")

    async def index(request):
        resp = web.Response(text=page, content_type="text/html")
        if token is not None and request.query.get("token"):
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return resp

    async def app_js(request):
        return web.Response(text=script, content_type="application/javascript")

    async def app_css(request):
        return web.Response(text=style, content_type="text/css")

    async def summary(request):
        return _json(review.summary())

    async def docs(request):
        return _json(review.page(dict(request.query)))

    async def doc(request):
        d = review.doc(request.query.get("id", ""))
        return _json(d) if d is not None else _json({"error": "unknown document id"}, 404)

    async def label(request):
        if request.content_type != "application/json":
            raise BadRequest("send application/json")
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        return _json(review.label(body))

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app.router.add_get("/", index)
    app.router.add_get("/app.js", app_js)
    app.router.add_get("/app.css", app_css)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/docs", docs)
    app.router.add_get("/api/doc", doc)
    app.router.add_post("/api/label", label)
    return app


class Server:
    """The app on host:port, run by an event loop in a thread of its own (tests, benchmarks) or in
    the caller's (the CLI)."""

    def __init__(self, review: Review, host: str = "127.0.0.1", port: int = 0):
        self.review, self.host, self.port = review, host, port
        self.loopback = is_loopback(host)
        self.token = None if self.loopback else secrets.token_urlsafe(24)
        self.app = make_app(review, self.token, self.loopback)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise FactoryError(f"cannot listen on {self.host}:{self.port} ({e.strerror or e})", field="--port",
                               fix="give another --port, or --port 0 for a free one") from None
        self.port = site._server.sockets[0].getsockname()[1]  # the port chosen for --port 0
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start_thread(self) -> str:
        """Serve from a background thread; returns the URL once listening."""
        ready = threading.Event()
        err: list[BaseException] = []

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.start())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                err.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="review-server")
        self._thread.start()
        ready.wait()
        if err:
            raise err[0]
        return self.url

    def stop_thread(self) -> None:
        loop, thread, self._thread = self._loop, self._thread, None
        if loop is not None and thread is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


async def serve_forever(server: Server, on_ready=None) -> None:
    url = await server.start()
    if on_ready:
        on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def write_html(review: Review, out: str, limit: int = 200) -> int:
    """A self-contained page: the funnel and the first `limit` entries (documents, seeds, marks),
    inline script and style, no network. Returns how many entries it holds."""
    from factory.core.stage import put_bytes

    ix = review.index
    n = min(limit, len(ix))
    docs = []
    for i in range(n):
        d = ix.doc(i)
        d["labels"] = {}
        docs.append(d)
    summary = review.summary()
    summary.update(static=True, embedded=n)
    data = json.dumps({"summary": summary, "docs": docs}, ensure_ascii=False, default=str)
    data = data.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    page = static_text("index.html")
    page = page.replace('<link rel="stylesheet" href="app.css">', "<style>\n" + static_text("app.css") + "</style>")
    script = static_text("app.js").replace("</script", "<\\/script")
    page = page.replace('<script src="app.js"></script>',
                        f"<script>window.REVIEW_STATIC = {data};</script>\n<script>\n{script}</script>")
    put_bytes(out, page.encode())
    return n
