"""Where a run's files live: a local folder, or any fsspec URL (s3://, gs://, ...).

Local paths keep the plain os/pathlib route. URLs go through fsspec (which torch brings); the
filesystem of a scheme (s3fs, gcsfs) is needed only when a URL uses it. Object stores need no
folders, so nothing here calls `makedirs` on them (s3fs would create a missing bucket). A failure
on a store becomes one `StorageError` line naming the URL and a fix.

What a run on a URL keeps where: checkpoints (DCP), the HF export, config.yaml, run.json and
metrics.jsonl (+ TensorBoard files) go to the URL; the launcher's train.log, the TensorBoard
writer and the export's staging folder live in a local scratch folder (`scratch_dir`), and are
uploaded at every checkpoint, every minute and at the end. The store alone is enough to resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from pathlib import Path

from train.config import ConfigError

OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2")
_NO_CREDS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "DefaultCredentialsError")


class StorageError(ConfigError):
    """A store that cannot be used (no such bucket, no credentials, unreachable): URL, what, fix."""

    def __init__(self, url: str, what: str, fix: str):
        super().__init__(f"{url}: {what} (fix: {fix})", fix)
        self.url, self.what = str(url), what


def is_url(p) -> bool:
    """True for a URL with a scheme other than file:// (those take the fsspec route)."""
    s = str(p)
    return "://" in s and not s.startswith(("file://", "local://"))


def join(base, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *(str(p).strip("/") for p in parts)])


def scratch_root() -> Path:
    """This machine's folder for the local copies of runs and data on a store."""
    return Path(tempfile.gettempdir()) / "train-scratch"


def scratch(run_dir: str, scratch_dir: str | None = None) -> Path:
    """The local folder of a run: run_dir itself when local, else scratch_dir or a temp folder
    named after the URL (the same on every rank of a node)."""
    if not is_url(run_dir):
        return Path(run_dir)
    if scratch_dir:
        return Path(scratch_dir)
    tag = hashlib.sha256(str(run_dir).rstrip("/").encode()).hexdigest()[:16]
    return scratch_root() / tag


# --------------------------------------------------------------------------- errors

def explain(e: BaseException, url: str) -> StorageError | None:
    """The StorageError for a failure on `url`, or None when it is not a storage failure."""
    scheme = str(url).split("://", 1)[0]
    bucket = str(url).split("://", 1)[-1].split("/", 1)[0]
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: {rank: exception}
    if isinstance(failures, dict):
        for inner in failures.values():
            found = explain(inner, url) if isinstance(inner, BaseException) else None
            if found:
                return found
        return None
    name, msg = type(e).__name__, str(e)
    if isinstance(e, ImportError) or (isinstance(e, ValueError) and "Protocol not known" in msg):
        pkg = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(scheme, f"the fsspec filesystem for {scheme}://")
        return StorageError(url, f"no filesystem for {scheme}:// is installed", f"pip install {pkg}, or use a local path")
    if name in _NO_CREDS:
        return StorageError(url, "no credentials for the store",
                            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS "
                            "for gs://), or run where an instance role provides them")
    if isinstance(e, FileNotFoundError) and "bucket" in msg.lower():
        return StorageError(url, f"bucket '{bucket}' does not exist",
                            f"create it (e.g. `aws s3 mb {scheme}://{bucket}`) or fix the URL")
    if isinstance(e, PermissionError) or "AccessDenied" in msg or "InvalidAccessKeyId" in msg or "SignatureDoesNotMatch" in msg:
        return StorageError(url, f"access denied ({msg.splitlines()[0][:120] if msg else name})",
                            "check the credentials and that they may read and write this bucket")
    if "EndpointConnectionError" in name or "ClientConnectorError" in name or "Could not connect" in msg:
        return StorageError(url, "cannot reach the store", "check AWS_ENDPOINT_URL (or the network) and retry")
    return None


@contextlib.contextmanager
def errors(url):
    """Turn a storage failure inside the block into one StorageError line about `url`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a storage failure
        err = explain(e, str(url))
        if err is None:
            raise
        raise err from None


# --------------------------------------------------------------------------- files (local or URL)

def fs_path(url: str):
    """(fsspec filesystem, path inside it) for a URL."""
    import fsspec

    with errors(url):
        return fsspec.core.url_to_fs(str(url))


def _fresh(url: str):
    fs, p = fs_path(url)
    fs.invalidate_cache()  # other processes (ranks, earlier runs) write here too
    return fs, p


def exists(p) -> bool:
    if not is_url(p):
        return Path(str(p).removeprefix("file://")).exists()
    fs, path = _fresh(p)
    with errors(p):
        return fs.exists(path)


def is_file(fs, path: str) -> bool:
    """Whether the file `path` of `fs` exists: on S3 one HEAD (s3fs's `exists` lists the prefix
    after a miss, to find a folder), elsewhere the filesystem's own check."""
    call = getattr(fs, "call_s3", None)
    if call is None:
        return fs.exists(path)
    bucket, key, _ = fs.split_path(path)
    try:
        call("head_object", Bucket=bucket, Key=key)
        return True
    except FileNotFoundError:
        return False


def read_bytes(p) -> bytes:
    if not is_url(p):
        return Path(str(p).removeprefix("file://")).read_bytes()
    fs, path = fs_path(p)
    with errors(p):
        return fs.cat_file(path)


def read_text(p) -> str:
    return read_bytes(p).decode()


def write_bytes(p, data: bytes) -> None:
    """One file written whole: one PUT on an object store (which commits it atomically); on a local
    disk a temporary name then a rename, parents made."""
    if not is_url(p):
        q = Path(str(p).removeprefix("file://"))
        q.parent.mkdir(parents=True, exist_ok=True)
        tmp = q.with_name(f".tmp-{uuid.uuid4().hex}-{q.name}")
        tmp.write_bytes(data)
        os.replace(tmp, q)
        return
    fs, path = fs_path(p)
    with errors(p):
        _parent(fs, p, path)
        fs.pipe_file(path, data)


def write_text(p, text: str) -> None:
    write_bytes(p, text.encode())


def _parent(fs, url: str, path: str) -> None:
    if str(url).split("://", 1)[0] not in OBJECT_STORES:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Matching paths (as URLs for a URL pattern), sorted."""
    if not is_url(pattern):
        import glob as g
        return sorted(g.glob(pattern))
    fs, path = _fresh(pattern)
    with errors(pattern):
        return sorted(fs.unstrip_protocol(m) for m in fs.glob(path))


def rm(p, recursive: bool = False) -> None:
    """Remove a file or (recursive) a folder; a missing one is fine."""
    if not is_url(p):
        import shutil
        q = Path(p)
        shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(missing_ok=True)
        return
    fs, path = _fresh(p)
    with errors(p):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def put_file(local: str | Path, url: str) -> None:
    fs, path = fs_path(url)
    with errors(url):
        _parent(fs, url, path)
        fs.put_file(str(local), path)


def put_dir(local: str | Path, url: str, last: str | None = None, replace: bool = False) -> None:
    """Upload every file under `local` to `url`; `last` (e.g. config.json) goes last, so its
    presence marks a complete upload. `replace`: remove `last` first, then the old folder."""
    local = Path(local)
    files = sorted(f for f in local.rglob("*") if f.is_file())
    if replace:
        if last:
            rm(join(url, last))
        rm(url, recursive=True)
    files.sort(key=lambda f: f.name == last)
    for f in files:
        put_file(f, join(url, f.relative_to(local).as_posix()))


def get_file(url: str, local: str | Path) -> None:
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    Path(local).write_bytes(read_bytes(url))
