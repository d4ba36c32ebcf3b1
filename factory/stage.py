"""A stage's output folder: manifest.json, atomic shard writes, skip-finished, and a dataset card.

Any fsspec URL works (local path, s3://, gs://). A shard exists only once complete: it is written
under a temporary name and renamed. Rerunning with the same config skips finished shards; a
different config in the same folder is refused rather than silently mixed with old output.
"""

from __future__ import annotations

import io
import json
import platform
import time
import uuid
from collections import Counter
from importlib import metadata
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from factory.config import config_hash
from factory.errors import FactoryError
from factory.schema import DOC_SCHEMA, to_table

MANIFEST = "manifest.json"
ROW_GROUP = 1000  # rows per parquet row group, as datatrove's writers: readers can split a file by them
_VERSIONED = ("synth-factory", "ray", "datatrove", "torch", "openai", "tokenizers", "pyarrow", "pydantic")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class StageDir:
    """One stage's output folder."""

    def __init__(self, url: str, stage: str, config: BaseModel | dict[str, Any], inputs: Iterable[str] = ()):
        self.url = str(url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.stage = stage
        self.config = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        self.hash = config_hash(self.config)
        self.inputs = [str(i) for i in inputs]
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.timings: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self._t0 = time.time()
        self._check_config()

    # paths ------------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def _check_config(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)
        old = self.read_manifest(self.url)
        if old and old.get("config_hash") != self.hash:
            raise FactoryError(
                f"this folder holds {old.get('stage')} output made with another config "
                f"(hash {old.get('config_hash')}, now {self.hash})",
                where=self.url,
                fix="write to a new output folder, or delete this one to start over",
            )
        if not old:  # claim the folder for this config before any shard lands
            self._write_manifest(status="running")

    # shards -----------------------------------------------------------------------------------
    def done(self, name: str) -> bool:
        """A finished shard (the final name only appears after a complete write)."""
        return self.exists(name)

    def write_bytes(self, name: str, data: bytes) -> str:
        final = self.path(name)
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, final)
        return final

    def write_table(self, name: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP)
        return self.write_bytes(name, buf.getvalue())

    def write_docs(self, name: str, rows: Iterable[dict[str, Any]]) -> int:
        table = to_table(rows)
        self.write_table(name, table)
        return table.num_rows

    def write_json(self, name: str, obj: Any) -> str:
        return self.write_bytes(name, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def list(self, pattern: str = "*.parquet") -> list[str]:
        return sorted(self.fs.glob(f"{self.root}/{pattern}"))

    # manifest ---------------------------------------------------------------------------------
    @staticmethod
    def read_manifest(url: str) -> dict[str, Any] | None:
        fs, root = fsspec.core.url_to_fs(str(url).rstrip("/"))
        p = f"{root}/{MANIFEST}"
        if not fs.exists(p):
            return None
        with fs.open(p, "rb") as f:
            return json.loads(f.read())

    def _write_manifest(self, status: str) -> None:
        self.write_json(
            MANIFEST,
            {
                "stage": self.stage,
                "status": status,
                "config": self.config,
                "config_hash": self.hash,
                "inputs": self.inputs,
                "counts": dict(self.counts),
                "dropped": dict(self.dropped),
                "timings": self.timings,
                "versions": versions(),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **self.extra,
            },
        )

    def finish(self, **extra: Any) -> dict[str, Any]:
        self.timings.setdefault("wall_s", round(time.time() - self._t0, 3))
        self.extra.update(extra)
        self._write_manifest(status="done")
        return self.read_manifest(self.url) or {}


def read_docs(url: str) -> pa.Table:
    """All document shards of a stage folder (or one parquet file) as one table."""
    fs, root = fsspec.core.url_to_fs(str(url).rstrip("/"))
    if root.endswith(".parquet"):
        files = [root]
    else:
        files = sorted(fs.glob(f"{root}/**/*.parquet")) or sorted(fs.glob(f"{root}/*.parquet"))
        files = [f for f in files if "/rejected/" not in f and "/.tmp-" not in f]
    if not files:
        raise FactoryError("no parquet shards found", where=str(url), fix="run the stage that writes this folder first")
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh).cast(DOC_SCHEMA))
    return pa.concat_tables(tables)


def write_card(stage: StageDir, title: str, summary: dict[str, Any], licence: str) -> None:
    """A dataset card (README.md) next to the shards, loadable with `datasets.load_dataset('parquet', ...)`."""
    lines = [
        "---",
        f"license: {licence}",
        "configs:",
        "- config_name: default",
        "  data_files: '*.parquet'",
        "---",
        f"# {title}",
        "",
        f"Stage `{stage.stage}`, config hash `{stage.hash}`.",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "Load it with:", "", "```python", "import datasets",
              f"datasets.load_dataset('parquet', data_files='{stage.url}/*.parquet')", "```", ""]
    stage.write_bytes("README.md", "\n".join(lines).encode())
