"""Fixtures for the training tests: tiny run configs and a tiny mix plan over real `.ds` shards."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest

WORDS = ("the cat dog bird sees eats likes finds a small big red blue quick slow old new tree house "
         "river stone runs sits under over near and then").split()


HOLD = textwrap.dedent("""
    # Test-only: after the checkpoint of step {step} is written, the rank holds still, so a test's
    # SIGKILL always lands between that checkpoint and the next, however busy the machine is.
    import time
    from train import checkpoint
    _save = checkpoint.save
    def save(root, step, *a, **kw):
        out = _save(root, step, *a, **kw)
        if step == {step}:
            time.sleep(600)
        return out
    checkpoint.save = save
""")


def hold_after_checkpoint(folder: Path, step: int) -> dict[str, str]:
    """Extra env for a torchrun child whose ranks stop still once checkpoint `step` is saved."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOLD.format(step=step))
    from train import launch

    env = launch.child_env()
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
    return env


def tiny_config(run_dir: Path, **over) -> dict:
    """A 2-layer model on learnable random tokens: a few seconds per run on 2 CPU ranks."""
    cfg = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 176},
        "data": {"source": "random", "seq_len": 64, "vocab_size": 128},
        "train": {"steps": 12, "global_batch": 8, "micro_batch": 2, "tensorboard": False},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "checkpoint": {"every": 4, "keep": 2},
        "eval": {"batches": 2},
    }
    for k, v in over.items():
        sec, _, key = k.partition(".")
        if key:
            cfg.setdefault(sec, {})[key] = v
        else:
            cfg[sec] = v
    return cfg


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))) + "." for _ in range(n)]


def write_ds(folder: Path, name: str, docs: list[list[int]]) -> Path:
    """A datatrove-format source: tokens (uint16) + document ends (uint64) + metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{name}_00000_unshuffled.ds"
    toks = np.concatenate([np.array(d, dtype=np.uint16) for d in docs])
    toks.tofile(f)
    np.cumsum([len(d) for d in docs]).astype("<u8").tofile(f"{f}.index")
    Path(f"{f}.metadata").write_text(f"tokenizer.json|2\n{len(toks)}\n{len(toks)}")
    return folder


@pytest.fixture(scope="session")
def tiny_plan(tmp_path_factory) -> Path:
    """plan.json over two sources tokenized with a real byte-level BPE (tokenizers), seq_len 64."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("plan")
    texts = {"web": _sentences(600, 1), "synthetic": _sentences(600, 2)}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts["web"] + texts["synthetic"],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(root / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    L, sources = 64, []
    for name, ts in texts.items():
        docs = [e.ids + [eos] for e in tok.encode_batch(ts)]
        write_ds(root / name, name, docs)
        sources.append((name, sum(len(d) for d in docs)))
    per = 80 * L  # 80 samples per source: 160 samples, 20 steps of 8
    plan = {"mix": "tiny", "seq_len": L, "seed": 0, "tokenizer": str(root / "tokenizer.json"),
            "vocab_size": tok.get_vocab_size(), "total_tokens": per * len(sources),
            "phases": [{"name": "main", "tokens": per * len(sources), "sources": [
                {"name": n, "path": str(root / n), "kind": "web" if n == "web" else "synthetic",
                 "share": 0.5, "unique_tokens": u, "tokens": per, "epochs": per / u, "max_epochs": None}
                for n, u in sources]}]}
    (root / "plan.json").write_text(json.dumps(plan, indent=1))
    return root / "plan.json"
