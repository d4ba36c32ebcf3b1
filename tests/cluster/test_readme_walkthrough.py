"""The one-machine cluster walk-through of the guide's "Running on a cluster" page
(docs/guide/cluster.md), run as written.

The bash blocks between `<!-- cluster-walkthrough -->` and `<!-- /cluster-walkthrough -->` are run
with bash from the repository root, as a user would run them in one shell. The only rewrites:
every literal port number in the blocks becomes the first port of a free run of 100 ports on this
machine (a node's ports and worker range are offsets from it), so the walk-through never meets
another Ray; HOME is a temp folder (the token `ray get-auth-token --generate` writes, datasets'
cache); and the environment starts without any Ray address, token or S3 setting of the caller.
Around the blocks the harness only adds `set -e` (to the steps, not to the stop block) and records
the shell's variables.

The last block (stopping the nodes) runs after the outcome is checked on the store while moto still
runs; it stops the cluster by itself (it is safe as written: it never calls `ray stop`), and the
test checks that none of the cluster's processes is left. Whatever happens, the finalizer kills
every process of the walk-through (its process group, everything naming its temp dir, the head's
client server, their children: Ray workers, llama.cpp teacher replicas, moto).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.nodes import _psutil, _tree, free_port_range, kill_now
from tests.readme_blocks import readme_blocks, run_bash, user_env

pytestmark = pytest.mark.slow

START, END = "<!-- cluster-walkthrough -->", "<!-- /cluster-walkthrough -->"
PORT = re.compile(r"(?<![\w.$-])(\d{4,5})(?![\w.])")  # 5555, :6379, =8265 ... (not 200000000, not $((p+5)))
RUN = 100  # ports per literal: a node's 6 ports, or a node's 100 worker ports


def walkthrough_blocks() -> list[str]:
    blocks = readme_blocks(START, END)
    assert len(blocks) >= 2, "the walk-through needs its steps and a last block that stops the nodes"
    return blocks


def port_map(script: str) -> dict[str, int]:
    """Every literal port of the walk-through -> the first of RUN free ports, no two runs overlapping."""
    literals = sorted({m.group(1) for m in PORT.finditer(script)}, key=int)
    assert all(1024 <= int(p) <= 65535 for p in literals), literals
    used: set[int] = set()
    out = {}
    for lit in literals:
        lo, hi = free_port_range(RUN, used)
        used.update(range(lo, hi + 1))
        out[lit] = lo
    return out


def remap(script: str, ports: dict[str, int]) -> str:
    return PORT.sub(lambda m: str(ports[m.group(1)]), script)




def shell_vars(path: Path) -> dict[str, str]:
    """WORK and MOTO_PID as the walk-through's shell left them (`declare -p` output)."""
    out = {}
    if path.exists():
        for name, value in re.findall(r"declare -\S* (\w+)=(.*)", path.read_text()):
            out[name] = shlex.split(value)[0] if value else ""
    return out


def cluster_processes(work: str | None, gcs_port: int | None, groups: set[int]) -> list:
    """Every live process of the walk-through: in its shells' process groups, naming its temp dir, or
    the head's client server, with all their descendants (Ray workers set a process group of their own)."""
    psutil = _psutil()
    mine = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if (os.getpgid(p.info["pid"]) in groups or (work and f"{work}/" in cmd)
                    or (gcs_port and "client.server" in cmd and f":{gcs_port} " in cmd)):
                mine.add(p.info["pid"])
        except (psutil.Error, OSError):
            pass
    mine.discard(os.getpid())
    return [p for p in _tree(mine) if p.pid != os.getpid()]


def read_json(fs, url: str) -> dict:
    return json.loads(fs.cat_file(url))


def test_readme_cluster_walkthrough(tmp_path):
    blocks = walkthrough_blocks()
    ports = port_map("\n".join(blocks))
    assert {"5555", "6379", "8265"} <= set(ports), f"the walk-through's ports changed: {sorted(ports)}"
    endpoint, gcs_port = f"http://127.0.0.1:{ports['5555']}", ports["6379"]
    steps, stop = [remap(b, ports) for b in blocks[:-1]], remap(blocks[-1], ports)
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    state = tmp_path / "vars.sh"
    groups: set[int] = set()
    t0 = time.time()
    try:
        # every block but the last, in one shell, stopping at the first failing command
        prologue = (f"set -e -o pipefail\nPS4='+ [$SECONDS s] '\nset -x\n"
                    f"trap 'declare -p WORK MOTO_PID > {shlex.quote(str(state))} 2>/dev/null' EXIT\n")
        rc, pgid = run_bash(prologue + "\n".join(steps), env, tmp_path / "walkthrough.log", timeout_s=600)
        groups.add(pgid)
        log = (tmp_path / "walkthrough.log").read_text()
        print(log[-6000:])
        assert rc == 0, f"the walk-through failed (exit {rc}):\n{log[-8000:]}"
        steps_s = time.time() - t0
        shell = shell_vars(state)
        work = shell.get("WORK")
        assert work and Path(work).is_dir(), shell

        # the outcome, read from the store while moto still runs
        import s3fs

        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint},
                               skip_instance_cache=True)
        for stage in ("seeds", "gen", "curated", "tokens"):
            assert read_json(fs, f"s3://factory/{stage}/manifest.json")["status"] == "done", stage
        gen = read_json(fs, "s3://factory/gen/manifest.json")
        assert gen["counts"]["docs"] > 0 and gen["counts"]["shards_done"] == gen["counts"]["shards"] == 4, gen["counts"]
        ran = {node: v["shards"] for node, v in gen["nodes"].items()}
        assert sorted(s for shards in ran.values() for s in shards) == [0, 1, 2, 3], ran
        assert len(ran) >= 2, f"the generation workers did not spread over the nodes: {ran}"
        assert gen["this_run"].get("shards_run", []) == [] and gen["this_run"].get("requests", 0) == 0, \
            f"the resubmitted run paid again: {gen['this_run']}"
        assert fs.glob("s3://factory/gen/cache/*/shard-*/seg-*.jsonl"), "no cache segment on the store"
        curated = read_json(fs, "s3://factory/curated/manifest.json")
        assert curated.get("executor") == "ray", curated.get("executor")
        kept = curated["counts"]["kept"]
        assert kept > 0, curated["counts"]
        docs = load_curated(endpoint, tmp_path / "hf")
        assert len(docs) == kept and all(t.strip() for t in docs["text"])
        assert all(m["recipe"] == "distill" for m in docs["meta"])
        assert fs.glob("s3://factory/tokens/synthetic/*.ds"), "no tokenized shard on the store"
        assert re.search(r"job raysubmit_\w+: SUCCEEDED", log), "the resubmitted stage did not succeed as a job"
        assert "done {" in log, "the look at the result printed no manifest"

        # the last block stops the nodes by itself, and nothing of the cluster is left
        before = cluster_processes(work, gcs_port, groups)  # moto and every Ray process the steps left
        assert before, "no process of the cluster was found before the stop step"
        declared = state.read_text()
        # as a user runs it (no `set -e`: a worker that exits with its raylet before `kill` reaches it is fine)
        rc, pgid = run_bash(f"set -x\n{declared}\n{stop}", env, tmp_path / "stop.log", timeout_s=120)
        groups.add(pgid)
        assert rc != -9, "the stop step hung"
        psutil = _psutil()
        gone, alive = psutil.wait_procs(before, timeout=15)
        stop_log = (tmp_path / "stop.log").read_text()
        assert not alive, f"left running by the stop step: {[' '.join(p.cmdline())[:120] for p in alive]}\n{stop_log}"
        assert not Path(work).exists(), stop_log
        print(f"walk-through: steps {steps_s:.0f} s, total {time.time() - t0:.0f} s")
    finally:
        shell = shell_vars(state)
        left = cluster_processes(shell.get("WORK"), gcs_port, groups)
        if shell.get("MOTO_PID", "").isdigit():
            try:
                left.append(_psutil().Process(int(shell["MOTO_PID"])))
            except Exception:  # noqa: BLE001 - already gone
                pass
        kill_now(left)
        if shell.get("WORK", "").startswith("/tmp/factory-cluster."):
            subprocess.run(["rm", "-rf", shell["WORK"]], check=False)


def load_curated(endpoint: str, cache: Path):
    """`datasets.load_dataset("parquet", data_files="s3://...", storage_options=...)`; datasets'
    offline mode refuses every remote URL, so it is lifted for this call (the store is on loopback)."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        return datasets.load_dataset("parquet", data_files="s3://factory/curated/data/*.parquet", split="train",
                                     cache_dir=str(cache), storage_options={
                                         "key": "testing", "secret": "testing",
                                         "client_kwargs": {"endpoint_url": endpoint}})
