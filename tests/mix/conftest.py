"""Small document folders (real stage folders) tokenized once for the mix tests."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from factory.core.schema import make_doc
from factory.core.stage import StageDir

WORDS = ("the cat sat on a mat while café naïve Straße 東京 ümlaut dog ran far away quick brown fox "
         "river stone tree house small big red blue").split()


def docs(kind: str, n: int, source: str, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{kind}{seed}")
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        if i % 7 == 0:
            text = "  Line one.\n\n\tCafe\u0301 (decomposed) — ½ “quotes”  \n"  # whitespace, NFD, symbols
        out.append(make_doc(text, kind, source, seed_id=f"{kind}:{i}"))
    return out


def write_stage(folder: Path, rows: list[dict]) -> Path:
    st = StageDir(str(folder), "test", {"rows": len(rows)})
    st.write_docs("part-00000.parquet", rows)
    st.finish()
    return folder


@pytest.fixture(scope="session")
def stages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    return {
        "seeds": write_stage(root / "seeds", docs("web", 240, "wiki")),
        "curated": write_stage(root / "curated", docs("synthetic", 160, "gen") + docs("rewrite", 90, "gen")),
    }


@pytest.fixture(scope="session")
def tokenized(stages, tmp_path_factory) -> Path:
    """A tokenize output folder with sources web, synthetic, rewrite (shards of 100 docs)."""
    from factory.mix.tokenize import TokenizeConfig, run

    out = tmp_path_factory.mktemp("tok") / "tok"
    run(TokenizeConfig(sources={"web": {"path": str(stages["seeds"])},
                                "synthetic": {"path": str(stages["curated"]), "kinds": ["synthetic"]},
                                "rewrite": {"path": str(stages["curated"]), "kinds": ["rewrite"]}},
                       tokenizer={"train": {"vocab_size": 400, "min_frequency": 2}}, out=str(out), shard_docs=100))
    return out


@pytest.fixture
def data(tokenized, tmp_path) -> Path:
    """A private copy of the tokenized folder (tests may break it)."""
    dst = tmp_path / "data"
    shutil.copytree(tokenized, dst)
    return dst
