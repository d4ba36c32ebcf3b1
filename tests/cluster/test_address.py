"""One way to reach Ray: `--address HOST:PORT` means a cluster's GCS in curate, train and ablate as in
generate, and all go through `factory.cluster.init_ray`, so a token-auth head works with the token
file alone (no RAY_AUTH_MODE exported), the way a user's shell has it after `ray start --head`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import BIN

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 128}


def factory(head, *args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}  # the token file alone
    return subprocess.run([str(BIN / "factory"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ran_on(head, prefix: str) -> bool:
    """True when the head's Ray ran a task or actor whose name starts with `prefix`."""
    from ray.util.state import list_tasks

    from .conftest import client_env

    with client_env(head.env):
        tasks = list_tasks(address=head.gcs, limit=10000, raise_on_missing_output=False)
    return any(t.name.startswith(prefix) for t in tasks)


def test_curate_train_and_ablate_reach_a_token_auth_head_by_address(ray_head, tmp_path):
    from factory.core.stage import StageDir
    from factory.mix import tokenize
    from factory.seeds.sources import load_wiki_summaries, wiki_rows
    from tests.curate.conftest import build

    planted = build(tmp_path / "corpus")
    r = factory(ray_head, "curate", "--in", planted.inputs, "--out", str(tmp_path / "curated"), "--address", ray_head.gcs)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "curated" / "manifest.json").read_text())
    assert m["status"] == "done" and m["executor"] == "ray"

    run = tmp_path / "train.yaml"
    run.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "model": TINY,
                                   "data": {"source": "random", "seq_len": 32, "vocab_size": 128},
                                   "train": {"steps": 3, "global_batch": 4, "micro_batch": 4, "tensorboard": False},
                                   "eval": {"batches": 1}}))
    r = factory(ray_head, "train", str(run), "--address", ray_head.gcs, "--nproc", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "done"

    web = StageDir(str(tmp_path / "web"), "web", {"n": 120})
    web.write_docs("part-0.parquet", wiki_rows(records=load_wiki_summaries()[:120]))
    web.finish()
    tokenize.run(tokenize.TokenizeConfig(sources={"web": {"path": str(tmp_path / "web")}},
                                         tokenizer={"train": {"vocab_size": 384}}, out=str(tmp_path / "tokens")))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "total_tokens": 2048, "seq_len": 32, "tokenizer": "tokenizer.json",
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 1.0}]}))
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({
        "name": "addr", "base_mix": "base.yaml", "data_root": str(tmp_path / "tokens"), "seeds": [0], "nproc": 1,
        "model": TINY, "run_config": {"train": {"global_batch": 4, "micro_batch": 4, "tensorboard": False}},
        "vary": {"seed": [0]}, "benchmarks": {"builtin": ["wiki_mc"], "n": 8, "source_windows": 2}}))
    r = factory(ray_head, "ablate", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "abl"), "--address", ray_head.gcs,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "abl").glob("cells/*/seed0/eval.json"))) == 1
    assert ran_on(ray_head, "_ray_lane")  # the cell ran as a task on the head's cluster
