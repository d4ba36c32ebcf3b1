"""A stage's output folder: manifest.json, atomic shard writes, skip-finished, and a dataset card.

Any fsspec URL works (local path, s3://, gs://). A shard exists only once complete: on a local
disk it is written under a temporary name and renamed; on an object store it is one PUT, which
the store makes visible all at once. Existence checks and listings always ask the store (other
processes and nodes write here too), never a cached listing. Rerunning with the same config skips finished shards; a
different config in the same folder is refused rather than silently mixed with old output.
"""

from __future__ import annotations

import functools
import io
import json
import platform
import time
from collections import Counter
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from factory.core.config import config_hash
from factory.core.errors import FactoryError, stopped
from factory.core.schema import DOC_SCHEMA, to_table

MANIFEST = "manifest.json"
DATA = "data"  # document shards: data/train-<name>.parquet, the Hub's layout (see doc_path)
ROW_GROUP = 1000  # rows per parquet row group, as datatrove's writers: readers can split a file by them
_VERSIONED = ("synth-factory", "ray", "datatrove", "torch", "openai", "tokenizers", "pyarrow", "pydantic")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    """Read once a process (each package's metadata is parsed: ~4 ms a package)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(out.items())


def versions() -> dict[str, str]:
    return dict(_versions())


class StageDir:
    """One stage's output folder."""

    def __init__(self, url: str, stage: str, config: BaseModel | dict[str, Any], inputs: Iterable[str] = (),
                 content: dict[str, str] | None = None):
        """`content`: hashes of files the config names whose bytes decide the output; they join the
        config's hash and go to the manifest beside the config, which stays loadable as a config."""
        self.url = str(url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.stage = stage
        # a config model's `out` is where the stage writes, not what: it stays out of the identity
        self.config = config.model_dump(mode="json", exclude={"out"}) if isinstance(config, BaseModel) else dict(config)
        self.hash = config_hash({**self.config, "content": content} if content else self.config)
        self.inputs = [str(i) for i in inputs]
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.timings: dict[str, float] = {}
        self.extra: dict[str, Any] = {"content": content} if content else {}
        self._t0 = time.time()
        self._check_config()

    # paths ------------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        p = self.path(name)
        self.fs.invalidate_cache(p.rsplit("/", 1)[0])
        return _storage.is_file(self.fs, p)

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
        self.status = (old or {}).get("status")
        if not old:  # claim the folder for this config before any shard lands
            self._write_manifest(status="running")

    def __enter__(self) -> "StageDir":
        return self

    def __exit__(self, kind, err, tb) -> None:
        """A run that raises leaves its manifest `failed` with the error, unless the folder is already
        `done` or this run wrote its own final status."""
        if err is not None and self.status not in ("done", "incomplete"):
            if isinstance(err, KeyboardInterrupt) and stopped() is not None:
                err = stopped()  # "stopped by SIGTERM", also where a library re-raised it as a KeyboardInterrupt
            self.extra["error"] = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
            try:
                self._write_manifest(status="failed")
            except Exception:  # noqa: BLE001 - the original error matters more than this write
                pass

    # shards -----------------------------------------------------------------------------------
    def done(self, name: str) -> bool:
        """A finished document shard (the final name only appears after a complete write)."""
        return self.exists(doc_path(name))

    def write_bytes(self, name: str, data: bytes) -> str:
        put_bytes(f"{self.url}/{name}", data)
        return self.path(name)

    def write_table(self, name: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP)
        return self.write_bytes(name, buf.getvalue())

    def write_docs(self, name: str, rows: Iterable[dict[str, Any]]) -> int:
        """Write the document shard `name` (at doc_path(name)); returns its row count."""
        table = to_table(rows)
        self.write_table(doc_path(name), table)
        return table.num_rows

    def write_json(self, name: str, obj: Any) -> str:
        return self.write_bytes(name, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def list(self, pattern: str = "*.parquet") -> list[str]:
        self.fs.invalidate_cache(self.root)
        return sorted(self.fs.glob(f"{self.root}/{pattern}"))

    # manifest ---------------------------------------------------------------------------------
    @staticmethod
    def read_manifest(url: str) -> dict[str, Any] | None:
        fs, root = fsspec.core.url_to_fs(str(url).rstrip("/"))
        p = f"{root}/{MANIFEST}"
        fs.invalidate_cache(root)
        if not fs.exists(p):
            return None
        with fs.open(p, "rb") as f:
            return json.loads(f.read())

    def _write_manifest(self, status: str) -> None:
        self.status = status
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
        """The stage is complete: the manifest says `done` (with `extra`); returns it."""
        return self._end("done", extra)

    def partial(self, **extra: Any) -> dict[str, Any]:
        """This run ends with work left (some shards unfinished): the manifest says `incomplete`
        with the counts so far and `extra`; a rerun resumes it. Returns the manifest."""
        return self._end("incomplete", extra)

    def _end(self, status: str, extra: dict[str, Any]) -> dict[str, Any]:
        self.timings.setdefault("wall_s", round(time.time() - self._t0, 3))
        self.extra.update(extra)
        self._write_manifest(status=status)
        return self.read_manifest(self.url) or {}


def doc_path(name: str) -> str:
    """Where the document shard `name` lives in a stage folder: `data/train-<name>`. With only
    shards under data/, `pyarrow.dataset.dataset(folder + "/data")` reads them, and the split
    keyword in the name lets `datasets.load_dataset("parquet", data_dir=folder)` and the Hub pick
    them out from README.md, manifest.json and rejected/ without options (datasets takes only a
    local data_dir: on a store, data_files=<folder>/data/*.parquet)."""
    return f"{DATA}/train-{name}"


def doc_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The document shards of the folder `root` of `fs`: a stage folder's data/*.parquet; in any
    other folder of parquet files, every one but those under rejected/, _work/ or a temporary name."""
    fs.invalidate_cache(root)
    files = sorted(fs.glob(f"{root}/{DATA}/*.parquet"))
    if not files:
        files = sorted(fs.glob(f"{root}/**/*.parquet")) or sorted(fs.glob(f"{root}/*.parquet"))
    return [f for f in files if not any(p in f for p in ("/rejected/", "/.tmp-", "/_work/"))]


def read_docs(url: str) -> pa.Table:
    """All document shards of a stage folder (or one parquet file) as one table."""
    fs, root = fsspec.core.url_to_fs(str(url).rstrip("/"))
    fs.invalidate_cache(root)
    files = [root] if root.endswith(".parquet") else doc_files(fs, root)
    if not files:
        raise FactoryError("no parquet shards found", where=str(url), fix="run the stage that writes this folder first")
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            try:
                tables.append(pq.ParquetFile(fh).read().cast(DOC_SCHEMA))
            except (pa.ArrowException, ValueError) as e:
                raise FactoryError(f"not a parquet file of document rows ({str(e).splitlines()[0][:160]})",
                                   where=to_url(fs, f), fix="give a stage folder or a parquet file with "
                                   "id, text, kind, source, meta (or a .jsonl file of seeds)") from None
    return pa.concat_tables(tables)


def licences(urls: Iterable[str]) -> list[str]:
    """The licences the stage folders at `urls` declare in their manifests (`licence`), sorted and
    unique; "other" for an input that declares none (a plain file, a folder of another tool)."""
    found = set()
    for u in urls:
        m = None if str(u).endswith((".parquet", ".jsonl", ".json")) else StageDir.read_manifest(u)
        lic = (m or {}).get("licence") or "other"
        found.update([lic] if isinstance(lic, str) else lic)
    return sorted(found) or ["other"]


def write_card(stage: StageDir, title: str, summary: dict[str, Any], licence: str | list[str]) -> None:
    """A dataset card (README.md) beside data/, which `huggingface_hub.DatasetCard.load` and the Hub
    read; its `license` (an SPDX-style id or a list of them) also goes into the manifest, so a
    later stage's card carries the licence of the seeds."""
    import yaml

    lic = licence[0] if isinstance(licence, list) and len(licence) == 1 else licence
    stage.extra["licence"] = lic
    meta = {"license": lic, "configs": [{"config_name": "default", "data_files": f"{DATA}/*.parquet"}]}
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        f"# {title}",
        "",
        f"Stage `{stage.stage}`, config hash `{stage.hash}`.",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    where = f"data_files='{stage.url}/{DATA}/*.parquet'" if is_url(stage.url) else f"data_dir='{stage.url}'"
    lines += ["", "Load it with:", "", "```python", "import datasets",
              f"datasets.load_dataset('parquet', {where}, split='train')", "```", ""]
    stage.write_bytes("README.md", "\n".join(lines).encode())


# storage helpers: each input and output is a URL resolved with its own filesystem ---------------
# The file primitives and the storage-error diagnosis live in train.storage (the torch-only side,
# which cannot import this package); here they raise FactoryError.
from train import storage as _storage  # noqa: E402
from train.storage import OBJECT_STORES, is_url, join  # noqa: E402,F401  (re-exported)


def fresh_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of `url` with the instance's cached listings dropped: other processes and
    nodes write to the same store, so a listing taken earlier may be stale."""
    fs, path = fsspec.core.url_to_fs(str(url).rstrip("/") or "/")
    fs.invalidate_cache()
    return fs, path


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path of `fs` as a URL again (a plain path for local files)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def exists(url: str) -> bool:
    with storage_errors(url):
        return _storage.exists(url)


def read_bytes(url: str) -> bytes:
    with storage_errors(url):
        return _storage.read_bytes(url)


def read_text(url: str) -> str:
    return read_bytes(url).decode()


def put_bytes(url: str, data: bytes) -> str:
    """Write one whole file (a temporary name then a rename on a local disk, one PUT on a store).
    Returns `url`."""
    with storage_errors(url):
        _storage.write_bytes(url, data)
    return str(url)


def check_store(url: str) -> None:
    """Fail early, in one line naming `url`, when its bucket is missing (never created here: a
    typo must not make a new bucket) or the credentials from the environment do not reach it."""
    fs, path = fsspec.core.url_to_fs(str(url))
    proto = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not set(proto) & set(OBJECT_STORES):
        return
    bucket = path.split("/", 1)[0]
    with storage_errors(url):
        fs.invalidate_cache(bucket)
        try:
            fs.info(bucket)
        except FileNotFoundError:
            raise FactoryError(f"bucket '{bucket}' does not exist", where=str(url),
                               fix=f"create it first (e.g. `aws s3 mb {proto[0]}://{bucket}`) or correct the URL") from None


def storage_error(e: BaseException, url: str) -> FactoryError | None:
    """A storage exception as one FactoryError naming `url` and a fix (None: not a storage error)."""
    found = e if isinstance(e, _storage.StorageError) else _storage.explain(e, url)
    if found is not None:
        return FactoryError(found.what, where=url, fix=found.fix)
    names = {c.__name__ for c in type(e).__mro__}
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "FileNotFoundError" in names:
        return FactoryError(f"not found ({msg})", where=url, fix="check the URL, or run the stage that writes it")
    if names & {"ConnectionError", "ConnectTimeoutError"}:
        return FactoryError(f"storage unreachable ({msg})", where=url,
                            fix="check the network and the endpoint (AWS_ENDPOINT_URL)")
    if names & {"BotoCoreError", "ClientError"} or isinstance(e, OSError):
        return FactoryError(f"storage error ({msg})", where=url, fix="check the URL, the bucket and the credentials")
    return None


@contextmanager
def storage_errors(url: str, remote_only: bool = False):
    """Turn storage exceptions raised inside into one FactoryError line naming `url`.
    `remote_only`: leave exceptions alone when `url` is a local path (around a whole stage, where
    an OSError may come from elsewhere and its traceback matters)."""
    try:
        yield
    except FactoryError:
        raise
    except Exception as e:  # noqa: BLE001 - storage_error decides; others propagate unchanged
        err = None if remote_only and not is_url(str(url)) else storage_error(e, str(url))
        if err is None:
            raise
        raise err from None


def forget_listings() -> None:
    """Drop the cached directory listings of every filesystem instance in this process."""
    classes = [fsspec.AbstractFileSystem]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        for fs in list(cls.__dict__.get("_cache", {}).values()):
            fs.invalidate_cache()
