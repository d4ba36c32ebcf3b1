"""What losing a node costs a generate run: repaid teacher calls and wall time, against the same
run undisturbed, on a real 3-node Ray cluster (a head and two worker raylets on this machine) with
outputs and the request cache on an S3-compatible server on loopback (moto).

The teacher is the local llama.cpp server (SmolLM2-135M) behind a latency injector that also counts
how often each distinct request reached the teacher. Each round runs the job undisturbed, then
again with node b SIGKILLed once a third of the requests are answered (a new node b joins after).
The two alternate over rounds; medians are reported.

ours   = wall seconds of the run that lost a node; anchor = wall seconds undisturbed
repaid = requests the teacher answered more than once, as a % of all distinct requests
Target: the stated bound, at most 2 x cache_flush_every - 1 + concurrency repaid per lost shard.

    python benchmarks/node_loss.py [--seeds 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "generate")]
CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


def run_job(cluster, config: Path, proxy, kill_at: int | None) -> float:
    t0 = time.time()
    p = subprocess.Popen([*CLI, "generate", str(config), "--address", cluster.address],
                         env={**os.environ, **cluster.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_at is not None:
        while sum(proxy.forwarded.values()) < kill_at and p.poll() is None:
            time.sleep(0.05)
        cluster.kill_node("b")
    _, err = p.communicate(timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(err[-3000:])
    return time.time() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--flush-every", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/node_loss.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import yaml
    from gen_helpers import recipe, seed_rows

    from factory.teacher.cache import SPOOL_ENV
    from factory.teacher.server import LocalTeacher
    from tests.cluster.nodes import Cluster
    from tests.proxy import FaultProxy
    from tests.s3server import S3Server

    tmp = Path(tempfile.mkdtemp(prefix="nodeloss-"))
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in seed_rows(a.seeds)))
    s3 = S3Server().start()
    spools = {n: {SPOOL_ENV: str(tmp / f"spool-{n}")} for n in ("head", "a", "b")}
    rounds = []
    try:
        bucket = s3.bucket("nodeloss")
        with LocalTeacher(replicas=1) as teacher, FaultProxy(teacher.endpoints[0], delay_s=0.2) as px, \
                Cluster(("a", "b"), node_env=spools) as cluster:
            cluster.start(num_cpus=1)
            for r in range(a.rounds):
                row = {}
                for side in ("calm", "storm") if r % 2 == 0 else ("storm", "calm"):
                    cfg = tmp / f"{side}{r}.yaml"
                    cfg.write_text(yaml.safe_dump({
                        "seeds": str(seeds), "out": f"{bucket}/{side}{r}", "recipes": [recipe("tiny_word")], "shards": 6,
                        "workers": 3, "concurrency": a.concurrency, "worker_cpus": 0.25,
                        "cache_flush_every": a.flush_every, "cache_flush_s": 60,
                        "teacher": {"endpoints": [{"base_url": px.base_url, "model": teacher.model}], "timeout_s": 60,
                                    "sampling": {"temperature": 0.0}}}))
                    px.forwarded.clear()
                    wall = run_job(cluster, cfg, px, a.seeds // 3 if side == "storm" else None)
                    calls = sum(px.forwarded.values())
                    row[side] = {"wall_s": round(wall, 2), "calls": calls, "distinct": len(px.forwarded),
                                 "repaid": calls - len(px.forwarded)}
                    if side == "storm":
                        cluster.add_node("b")
                rounds.append(row)
                print(f"round {r + 1}: undisturbed {row['calm']['wall_s']} s; node lost {row['storm']['wall_s']} s, "
                      f"repaid {row['storm']['repaid']} of {row['storm']['distinct']} requests", flush=True)
    finally:
        s3.stop()
    calm = statistics.median(r["calm"]["wall_s"] for r in rounds)
    storm = statistics.median(r["storm"]["wall_s"] for r in rounds)
    repaid = [100 * r["storm"]["repaid"] / r["storm"]["distinct"] for r in rounds]
    bound = 2 * a.flush_every - 1 + a.concurrency
    res = {"ours": round(storm, 2), "anchor": round(calm, 2), "ratio": round(calm / storm, 3),
           "unit": "wall s (node lost / undisturbed); ratio = undisturbed / node lost",
           "repaid_pct_median": round(statistics.median(repaid), 2), "repaid_pct_runs": [round(x, 2) for x in repaid],
           "repaid_bound_per_lost_shard": bound, "target": f"repaid <= {bound} requests per shard in flight on the lost node",
           "rounds": rounds, "seeds": a.seeds,
           "setup": "3 raylets on one machine, outputs and cache on moto_server, llama.cpp SmolLM2-135M + 0.2 s latency",
           "machine": f"{os.cpu_count()} CPUs, {Path('/proc/cpuinfo').read_text().split('model name')[1].split(':')[1].splitlines()[0].strip()}",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("ours", "anchor", "ratio", "repaid_pct_median", "repaid_bound_per_lost_shard")}))


if __name__ == "__main__":
    main()
