"""`factory review` over HTTP against the real server (aiohttp on loopback) on a small synthetic run
written with the real stage writers: the funnel, filters, paging, documents beside their seeds
with marks, path traversal, labels (validation, corrupt lines, two reviewers, agreement), the
token off loopback, the static HTML file and the CLI's one-line errors."""

from __future__ import annotations

import http.client
import json
import math
import subprocess
import sys
from collections import Counter
from urllib.parse import urlencode, urlsplit

import pytest

from factory.review.labels import LabelStore, agreement
from factory.review.server import Review, Server
from tests.clihelp import cli, one_error
from tests.review.runfolder import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("review") / "run"
    truth = make_run(root, seeds=10, shard_rows=7)  # small shards: several files and row groups
    return root, truth


@pytest.fixture
def fresh(tmp_path):
    """A run of its own (labels are written beside it)."""
    root = tmp_path / "run"
    return root, make_run(root, seeds=4)


class Client:
    def __init__(self, url: str, token: str | None = None):
        u = urlsplit(url)
        self.host, self.port, self.token = u.hostname, u.port, token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read(), dict(r.getheaders())
        finally:
            c.close()

    def get(self, path: str, **params):
        if self.token:
            params["token"] = self.token
        status, data, _ = self.request("GET", path + ("?" + urlencode(params) if params else ""))
        return status, (json.loads(data) if data[:1] in (b"{", b"[") else data)

    def label(self, doc: str, label: str, note: str = "", **kw):
        body = json.dumps({"id": doc, "label": label, "note": note, **kw}).encode()
        status, data, _ = self.request("POST", "/api/label", body, {"Content-Type": "application/json"})
        return status, json.loads(data)


@pytest.fixture
def serve():
    started = []

    def start(folder, reviewer="alice", host="127.0.0.1", labels=None):
        srv = Server(Review(str(folder), reviewer, labels), host, 0)
        srv.start_thread()
        started.append(srv)
        return srv, Client(f"http://127.0.0.1:{srv.port}/", srv.token)

    yield start
    for s in started:
        s.stop_thread()


def test_funnel_per_recipe_and_teacher_with_reasons(run, serve):
    root, truth = run
    _, cl = serve(root)
    status, s = cl.get("/api/summary")
    assert status == 200
    req = truth["requests"]
    st = Counter(r["status"] for r in req)
    assert s["funnel"]["total"] == {"seeds": 10, "requests": len(req), "documents": len(req) - st["failed"],
                                    "kept": st["kept"], "rejected": st["rejected"], "failed": st["failed"],
                                    "uncurated": 0}
    # the manifests agree with the rows
    m = s["funnel"]["manifests"]
    assert m["curate"]["counts"]["kept"] == st["kept"] and m["generate"]["counts"]["docs"] == len(req) - st["failed"]
    for key, field in (("recipes", "recipe"), ("teachers", "teacher")):
        for g in s["funnel"][key]:
            mine = [r for r in req if r[field] == g[field]]
            c = Counter(r["status"] for r in mine)
            assert (g["requests"], g["documents"], g["kept"], g["rejected"], g["failed"]) == \
                (len(mine), len(mine) - c["failed"], c["kept"], c["rejected"], c["failed"]), g
            assert g["seeds"] == len({r["seed_id"] for r in mine})
            assert g["reasons"] == dict(Counter(r["reason"] for r in mine if r["reason"]))
    assert {g["teacher"] for g in s["funnel"]["teachers"]} == {"teacher-a", "teacher-b"}
    reasons = {(x["stage"], x["reason"]): x["count"] for x in s["funnel"]["reasons"]}
    want = Counter((("generate" if r["status"] == "failed" else "curate"), r["reason"]) for r in req if r["reason"])
    assert reasons == dict(want)


def test_filters_and_server_side_paging(run, serve):
    root, truth = run
    _, cl = serve(root)
    req = truth["requests"]
    want = {r["id"] for r in req if r["status"] == "rejected" and r["reason"] == "unfaithful" and r["recipe"] == "textbook"}
    status, d = cl.get("/api/docs", status="rejected", reason="unfaithful", recipe="textbook", size=50)
    assert status == 200 and d["total"] == len(want) and {r["id"] for r in d["rows"]} == want
    # every page of 4 over everything: each entry once, no page larger than asked
    seen = []
    total = len(req)
    for page in range(math.ceil(total / 4)):
        _, d = cl.get("/api/docs", page=page, size=4)
        assert d["total"] == total and len(d["rows"]) <= 4
        seen += [r["id"] for r in d["rows"]]
    assert len(seen) == total == len(set(seen))
    assert {i for i in seen if not i.startswith("failed-")} == {r["id"] for r in req if r["id"]}
    _, d = cl.get("/api/docs", page=999, size=4)
    assert d["rows"] == [] and d["total"] == total
    _, d = cl.get("/api/docs", status="kept", teacher="teacher-b")
    assert d["total"] == sum(r["status"] == "kept" and r["teacher"] == "teacher-b" for r in req)
    assert all(len(r["text"]) <= 241 for r in d["rows"])  # a snippet, not the document
    for bad in ({"size": 0}, {"size": 10_000}, {"page": -1}, {"page": "x"}, {"label": "nonsense"}):
        assert cl.get("/api/docs", **bad)[0] == 400, bad


def test_document_beside_its_seed_with_what_each_check_saw(run, serve):
    root, truth = run
    _, cl = serve(root)
    seeds = {r["meta"]["seed_id"]: r["text"] for r in truth["seed_rows"]}
    _, d = cl.get("/api/docs", reason="unfaithful", size=1)
    _, doc = cl.get("/api/doc", id=d["rows"][0]["id"])
    assert doc["seed"]["text"] == seeds[doc["seed_id"]]
    spans = {doc["text"][m["start"]:m["end"]] for m in doc["marks"]}
    assert {"Zorbania Quux", "1999"} <= spans and all(m["kind"] == "unfaithful" for m in doc["marks"])
    _, d = cl.get("/api/docs", reason="meta_commentary", size=1)
    _, doc = cl.get("/api/doc", id=d["rows"][0]["id"])
    assert [doc["text"][m["start"]:m["end"]] for m in doc["marks"]] == ["This passage"]
    _, d = cl.get("/api/docs", reason="truncated", size=1)
    _, doc = cl.get("/api/doc", id=d["rows"][0]["id"])
    assert any(n["kind"] == "truncated" for n in doc["notes"]) and doc["marks"][-1]["end"] == len(doc["text"])
    _, d = cl.get("/api/docs", reason="near_dup", size=1)
    _, doc = cl.get("/api/doc", id=d["rows"][0]["id"])
    dup = [n for n in doc["notes"] if n["kind"] == "duplicate"]
    assert dup and cl.get("/api/doc", id=dup[0]["doc"])[1]["status"] == "kept"
    _, d = cl.get("/api/docs", status="kept", size=50)
    notes = [n for r in d["rows"] for n in cl.get("/api/doc", id=r["id"])[1]["notes"]]
    assert {"kind": "stripped", "text": "Here is the rewritten text:", "where": "start", "step": "meta_commentary"} in notes
    _, d = cl.get("/api/docs", status="failed", size=1)
    _, doc = cl.get("/api/doc", id=d["rows"][0]["id"])
    assert doc["text"].startswith("Question: 1") and doc["reason"] == "parse_no_qa_pairs"
    assert doc["seed"]["text"] == seeds[doc["seed_id"]]


TRAVERSAL = ["/../../../../etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
             "//etc/passwd", "/etc/passwd", "/static/../../etc/passwd", "/seeds/manifest.json", "/manifest.json",
             "/curated/data/train-00000.parquet", "/labels.jsonl", "/app.js/../../manifest.json",
             "/%252e%252e/%252e%252e/etc/passwd", "/api/../../etc/passwd", "/api/doc/../../../etc/passwd",
             "/api/doc?id=../../etc/passwd", "/api/doc?id=%2Fetc%2Fpasswd", "/api/doc?id=..%2F..%2Fmanifest.json",
             "/api/doc?id=%2e%2e%2f%2e%2e%2fseeds%2fmanifest.json", "/.%2e/.%2e/etc/passwd", "/C:%5cWindows"]


def test_nothing_outside_the_page_is_served(run, serve):
    root, _ = run
    _, cl = serve(root)
    for path in TRAVERSAL:
        status, body, _ = cl.request("GET", path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and b"config_hash" not in body and b"PAR1" not in body, path


def test_bad_labels_are_refused_and_the_file_untouched(fresh, serve):
    root, truth = fresh
    srv, cl = serve(root)
    labels = root / "labels.jsonl"
    good = next(r["id"] for r in truth["requests"] if r["id"])
    assert cl.label(good, "clean", "fine")[0] == 200
    before = labels.read_bytes()
    attempts = [
        json.dumps({"id": "no-such-doc", "label": "clean"}).encode(),
        json.dumps({"id": good, "label": "excellent"}).encode(),
        json.dumps({"id": good, "label": "clean", "reviewer": "mallory"}).encode(),
        json.dumps({"id": good, "label": "clean", "note": 5}).encode(),
        json.dumps({"id": good, "label": "clean", "note": "x" * 5000}).encode(),
        json.dumps({"id": "../../etc/passwd", "label": "clean"}).encode(),
        json.dumps([good, "clean"]).encode(),
        b"{not json", b"",
    ]
    for body in attempts:
        status, data, _ = cl.request("POST", "/api/label", body, {"Content-Type": "application/json"})
        assert status == 400, (body[:60], status, data)
    status, _, _ = cl.request("POST", "/api/label", json.dumps({"id": good, "label": "clean"}).encode(),
                              {"Content-Type": "text/plain"})
    assert status == 400  # a cross-site form cannot post JSON
    status, _, _ = cl.request("POST", "/api/label", b'{"id": "' + b"a" * 100_000 + b'"}',
                              {"Content-Type": "application/json"})
    assert status == 413  # bodies are size-limited
    assert cl.request("GET", "/api/label")[0] in (404, 405)
    assert labels.read_bytes() == before


def test_labels_survive_a_restart_and_a_corrupt_line_is_reported_not_rewritten(fresh, serve):
    root, truth = fresh
    ids = [r["id"] for r in truth["requests"] if r["id"]]
    labels = root / "labels.jsonl"
    good = json.dumps({"id": ids[0], "label": "meta", "note": "", "reviewer": "alice", "time": "t"})
    labels.write_text(good + "\n{torn line\n" + json.dumps({"id": ids[1], "label": "bogus", "reviewer": "alice"})
                      + "\n\n" + json.dumps({"id": ids[2], "label": "clean", "reviewer": "alice", "note": ""})
                      + "\n{\"id\": \"half")  # a crash mid-write: no newline at the end
    before = labels.read_bytes()
    srv, cl = serve(root)
    _, s = cl.get("/api/summary")
    assert s["labels"]["bad_lines"] == [2, 3, 6] and s["labels"]["mine"] == 2
    assert cl.label(ids[3], "repetitive", "loops")[0] == 200
    after = labels.read_bytes()
    assert after.startswith(before) and after[len(before):].startswith(b"\n")  # appended, never rewritten
    srv.stop_thread()
    _, cl2 = serve(root)  # a reload: a new server reads what was saved
    _, s = cl2.get("/api/summary")
    assert s["labels"]["bad_lines"] == [2, 3, 6] and s["labels"]["mine"] == 3
    _, doc = cl2.get("/api/doc", id=ids[3])
    assert doc["labels"]["alice"]["label"] == "repetitive" and doc["labels"]["alice"]["note"] == "loops"
    _, d = cl2.get("/api/docs", label="meta")
    assert [r["id"] for r in d["rows"]] == [ids[0]]
    _, d = cl2.get("/api/docs", label="unlabeled")
    assert d["total"] == len(truth["requests"]) - 3
    # the CLI says it too, in one line with the line numbers
    out = subprocess.run([sys.executable, "-m", "factory.cli", "review", str(root), "--html", str(root / "r.html")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 corrupt line(s) skipped (line 2, 3, 6)" in " ".join(out.stderr.split())
    assert labels.read_bytes() == after


def test_two_reviewers_are_kept_apart_with_their_agreement(fresh, serve):
    root, truth = fresh
    ids = [r["id"] for r in truth["requests"] if r["id"]][:6]
    _, alice = serve(root, "alice")
    _, bob = serve(root, "bob")
    a = ["clean", "clean", "meta", "unfaithful", "clean", "other"]
    b = ["clean", "meta", "meta", "unfaithful", "truncated"]  # bob leaves the sixth alone
    for i, lab in enumerate(a):
        assert alice.label(ids[i], "truncated" if i == 0 else lab)[0] == 200
    assert alice.label(ids[0], a[0])[0] == 200  # the last label per (doc, reviewer) wins
    for i, lab in enumerate(b):
        assert bob.label(ids[i], lab)[0] == 200
    _, s = alice.get("/api/summary")
    assert s["labels"]["reviewers"] == {"alice": 6, "bob": 5} and s["labels"]["mine"] == 6
    (ag,) = s["labels"]["agreement"]
    # by hand: 5 both, 3 same; alice clean 3, meta 1, unfaithful 1; bob clean 1, meta 2, unfaithful 1, truncated 1
    po, pe = 3 / 5, (3 * 1 + 1 * 2 + 1 * 1) / 25
    assert ag["reviewers"] == ["alice", "bob"] and ag["both"] == 5 and ag["agree"] == 0.6
    assert ag["kappa"] == pytest.approx((po - pe) / (1 - pe), abs=1e-4)
    _, doc = bob.get("/api/doc", id=ids[1])
    assert doc["labels"]["alice"]["label"] == "clean" and doc["labels"]["bob"]["label"] == "meta"
    _, d = bob.get("/api/docs", label="labeled")
    assert d["total"] == 5
    lines = [json.loads(x) for x in (root / "labels.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {x["reviewer"] for x in lines} == {"alice", "bob"}
    assert all(set(x) == {"id", "label", "note", "reviewer", "time"} for x in lines)
    # perfect agreement on one label: kappa is undefined, not 1 or 0
    lab = LabelStore(str(root / "none.jsonl"))
    for who in ("x", "y"):
        lab.append(ids[0], "clean", "", who)
    assert agreement(lab.read())[0] == {"reviewers": ["x", "y"], "both": 1, "same": 1, "agree": 1.0, "kappa": None}


def test_off_loopback_every_request_needs_the_token(fresh, serve):
    root, truth = fresh
    srv, cl = serve(root, host="0.0.0.0")
    assert srv.token and f"?token={srv.token}" in srv.url
    raw = Client(f"http://127.0.0.1:{srv.port}/")
    for path in ("/", "/app.js", "/api/summary", "/api/docs", "/api/doc?id=x", "/api/summary?token=wrong"):
        assert raw.request("GET", path)[0] == 401, path
    good = next(r["id"] for r in truth["requests"] if r["id"])
    assert raw.label(good, "clean")[0] == 401 and not (root / "labels.jsonl").exists()
    assert cl.get("/api/summary")[0] == 200
    assert raw.request("GET", "/api/summary", headers={"X-Review-Token": srv.token})[0] == 200
    status, _, headers = raw.request("GET", f"/?token={srv.token}")
    assert status == 200 and "review_token=" in headers.get("Set-Cookie", "") and "HttpOnly" in headers["Set-Cookie"]
    assert raw.request("GET", "/app.js", headers={"Cookie": f"review_token={srv.token}"})[0] == 200


def test_loopback_answers_only_loopback_hosts(run, serve):
    root, _ = run
    srv, cl = serve(root)
    assert srv.token is None and srv.url == f"http://127.0.0.1:{srv.port}/"
    assert cl.request("GET", "/api/summary", headers={"Host": "evil.example"})[0] == 403  # DNS rebinding
    status, body, headers = cl.request("GET", "/")
    assert status == 200 and b'<script src="app.js">' in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_static_html_is_self_contained(run, tmp_path):
    root, truth = run
    out = tmp_path / "review.html"
    p = subprocess.run([sys.executable, "-m", "factory.cli", "review", str(root), "--html", str(out), "--limit", "5"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    html = out.read_text()
    assert "window.REVIEW_STATIC" in html and "<style>" in html
    assert "src=" not in html and "href=\"http" not in html and "app.css" not in html.split("<style>")[0]
    data = json.loads(html.split("window.REVIEW_STATIC = ", 1)[1].split(";</script>", 1)[0])
    assert len(data["docs"]) == 5 and data["summary"]["funnel"]["total"]["requests"] == len(truth["requests"])
    assert all(d["seed"] for d in data["docs"])


@pytest.mark.parametrize("what", ["missing", "seeds", "empty", "file"])
def test_not_a_stage_or_run_is_one_clear_line(run, tmp_path, what):
    root, _ = run
    target = {"missing": tmp_path / "nope", "seeds": root / "seeds", "empty": tmp_path,
              "file": root / "seeds" / "manifest.json"}[what]
    one_error(cli("review", str(target)), str(target), "run folder")


def test_a_generate_stage_alone_and_a_run_on_s3(fresh, serve, s3_bucket):
    root, truth = fresh
    req = truth["requests"]
    _, cl = serve(root / "generated")  # no curate stage: documents are `generated`, the seeds found through inputs
    _, s = cl.get("/api/summary")
    t = s["funnel"]["total"]
    assert t["kept"] is None and t["uncurated"] == t["documents"] == sum(r["status"] != "failed" for r in req)
    _, d = cl.get("/api/docs", status="generated", size=1)
    assert cl.get("/api/doc", id=d["rows"][0]["id"])[1]["seed"]["text"]
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.put(str(root), f"{s3_bucket}/run", recursive=True)
    _, cl = serve(f"{s3_bucket}/run")
    _, s = cl.get("/api/summary")
    assert s["funnel"]["total"]["requests"] == len(req) and s["labels"]["path"] is None
    assert all(u.startswith(f"{s3_bucket}/run/") for u in s["stages"].values()), s["stages"]  # its own stages
    _, d = cl.get("/api/docs", reason="unfaithful", size=1)
    assert cl.get("/api/doc", id=d["rows"][0]["id"])[1]["marks"]
    assert cl.label(d["rows"][0]["id"], "clean")[0] == 400  # a remote folder's labels need --labels PATH
