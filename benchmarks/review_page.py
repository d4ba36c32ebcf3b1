"""The review page on a 100k-document run: time from `factory review FOLDER` to its first page.

A synthetic run (seeds/, generated/, curated/ with kept and rejected shards, written by the real
stage writers: tests/review/runfolder.py) of ~110k documents is made once (not timed). Each round
starts `factory review FOLDER --port 0` in a fresh process and times, from the spawn:
  ours   = the first page's JSON served (GET /api/docs, 50 rows), after the page (GET /) and the
           funnel (GET /api/summary), as the browser asks for them; median of the rounds;
  anchor = reading every document of the run at once with pyarrow (what a page that loads the
           whole run must do before it shows anything), median of the rounds.
ratio = ours / anchor (lower is better). Target: the first page in under 2 s on the 2-core machine.

    python benchmarks/review_page.py [--seeds 10000] [--samples 4] [--rounds 5] [--folder DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(folder: Path, seeds: int, samples: int) -> dict:
    from factory.core.stage import StageDir

    done = folder / "curated" / "manifest.json"
    if done.exists() and (StageDir.read_manifest(str(folder / "curated")) or {}).get("status") == "done":
        return json.loads((folder / "built.json").read_text())
    from tests.review.runfolder import make_run

    t0 = time.time()
    truth = make_run(folder, seeds=seeds, samples=samples, words=150, seed_words=200)
    info = {"requests": len(truth["requests"]), "documents": sum(r["status"] != "failed" for r in truth["requests"]),
            "build_s": round(time.time() - t0, 1)}
    (folder / "built.json").write_text(json.dumps(info))
    return info


def get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def one_round(folder: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "factory.cli", "review", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        t_listen = time.perf_counter() - t0
        s, html = get(port, "/")
        t_html = time.perf_counter() - t0
        s2, summary = get(port, "/api/summary")
        s3, page = get(port, "/api/docs?page=0&size=50")
        t_page = time.perf_counter() - t0
        assert s == s2 == s3 == 200 and b"app.js" in html and len(json.loads(page)["rows"]) == 50
        t1 = time.perf_counter()
        s4, _ = get(port, "/api/docs?page=1000&size=50&status=rejected")
        t_later = time.perf_counter() - t1
        return {"listen_s": t_listen, "html_s": t_html, "first_page_s": t_page, "later_page_s": t_later,
                "total": json.loads(page)["total"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def anchor(folder: Path) -> float:
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    n = 0
    for stage in ("curated", "generated"):
        for f in sorted((folder / stage).rglob("*.parquet")):
            n += pq.read_table(f).num_rows
    return time.perf_counter() - t0


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "review-bench-run"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/review_page.json"))
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    info = build(folder, args.seeds, args.samples)
    anchor(folder)  # warm the page cache for both sides alike
    load0 = os.getloadavg()[0]
    rounds = [one_round(folder) for _ in range(args.rounds)]
    anchors = [anchor(folder) for _ in range(args.rounds)]
    first = [r["first_page_s"] for r in rounds]
    ours, anc = statistics.median(first), statistics.median(anchors)
    res = {"ours": round(ours, 3), "anchor": round(anc, 3), "ratio": round(ours / anc, 3), "unit": "s",
           "target": 2.0, "target_met": ours < 2.0,
           "what": "seconds from `factory review FOLDER` (a fresh process) to the first page's JSON served, after "
                   "the page and the funnel; anchor: pyarrow reading every document of the run at once",
           "documents": info["documents"], "requests": info["requests"], "entries": rounds[0]["total"],
           "rounds": args.rounds, "first_page_s": spread(first), "html_s": spread([r["html_s"] for r in rounds]),
           "listen_s": spread([r["listen_s"] for r in rounds]),
           "later_page_s": spread([r["later_page_s"] for r in rounds]), "anchor_s": spread(anchors),
           "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],  # other work on the machine, before/after
           "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"review first page: {ours:.2f} s (median of {args.rounds}; target < 2 s); reading the whole run at once "
          f"{anc:.2f} s; ratio {ours / anc:.3f}")


if __name__ == "__main__":
    main()
