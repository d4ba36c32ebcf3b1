"""The work folder on an object store: datatrove's DataFolder with few, whole-object requests.

Datatrove's steps treat their folder as a disk: MinHash writes each signature file, reads it back,
sorts it, writes it again and reads it once more to verify; readers ask the size of a file (HEAD)
before reading it; an existence check that misses lists the prefix. On an object store each of
those is a round trip, thousands per run. `WorkFolder` keeps datatrove's steps as they are and
changes only what their folder does:

- a file written by a task goes to a local staging file; the task's last step (`Publish`) uploads
  all of them at once, concurrently, before datatrove writes the task's completion marker. What
  the task reads back of its own files (the sort, the verification) is read locally. A task that
  fails uploads nothing (the executors drop what it staged before the next task: `discard`), as a task that fails leaves no
  completion marker: what other nodes read is only ever the files of finished tasks.
- a listing of a folder the task wrote to publishes the task's files there first (a step may list
  what an earlier step of its task wrote: MinHash's clusters read the verified pairs);
- a file of another task is read with one GET (the whole object, up to `WHOLE` bytes; a larger one
  is streamed as before);
- `exists` / `isfile` of a file is one HEAD (no listing when it is absent).

On a local or shared POSIX folder nothing changes (`folder()` in pipeline.py gives the plain URL).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from typing import Any

from datatrove.io import DataFolder
from datatrove.pipeline.base import PipelineStep

WHOLE = 64 * 1024 * 1024  # files up to this size are read with one GET
# this process's staged files: (folder root, relative path) -> local file; and the uploads owed
_STAGED: dict[tuple[str, str], str] = {}
_OWED: dict[tuple[str, str], tuple["WorkFolder", str]] = {}
_DIR: list[str] = []
PREFETCH = 256 * 1024 * 1024  # a listing of files that add up to at most this is read at once (see list_files)
_FETCHED: dict[tuple[str, str], bytes] = {}  # read ahead by list_files, taken by open


def _staging() -> str:
    if not _DIR or not os.path.isdir(_DIR[0]):
        _DIR[:] = [tempfile.mkdtemp(prefix=f"factory-work-{os.getpid()}-")]
    return _DIR[0]


def discard() -> None:
    """Forget what this process staged and did not publish (a task that failed), and what it read ahead."""
    _OWED.clear()
    _FETCHED.clear()
    for local in _STAGED.values():
        try:
            os.unlink(local)
        except OSError:
            pass
    _STAGED.clear()


def publish(root: str | None = None) -> int:
    """Upload every file this process staged since the last publish (only those of the folder `root`
    when given), concurrently, one PUT each (grouped by filesystem); returns how many."""
    keys = [k for k in _OWED if root is None or k[0] == root]
    groups: dict[int, tuple[Any, list[str], list[str]]] = {}
    for key in keys:
        wf, local = _OWED[key]
        fs, lpaths, rpaths = groups.setdefault(id(wf.fs), (wf.fs, [], []))
        lpaths.append(local)
        rpaths.append(wf._join(key[1]))
    for fs, lpaths, rpaths in groups.values():
        fs.put(lpaths, rpaths)
    if root is None:
        discard()
    else:  # published: read back from the store from now on, like any other file
        for key in keys:
            _OWED.pop(key)
            local = _STAGED.pop(key, None)
            if local:
                os.unlink(local)
    return len(keys)


class _Bytes(io.BytesIO):
    """A file read whole, with the `size` and `path` of fsspec's files (MinHash reads them)."""

    def __init__(self, data: bytes, path: str):
        super().__init__(data)
        self.size, self.path = len(data), path


class _Staged(io.FileIO):
    """A local staging file; closing it records it as owed to the store (or uploads it, undeferred)."""

    def __init__(self, folder: "WorkFolder", rel: str):
        self._folder, self._rel = folder, rel
        self._local = os.path.join(_staging(), f"{uuid.uuid4().hex}-{rel.replace('/', '_')}")
        super().__init__(self._local, "wb")

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._folder._staged(self._rel, self._local)


class _Chain:
    """A compressing or text wrapper over a staging file: closing it closes both, in order."""

    def __init__(self, outer: Any, raw: _Staged):
        self._outer, self._raw = outer, raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._outer, name)

    def close(self) -> None:
        if not self._raw.closed:
            self._outer.close()
            self._raw.close()

    def __enter__(self) -> "_Chain":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self):
        return iter(self._outer)


class WorkFolder(DataFolder):
    """A DataFolder for datatrove's intermediates on an object store (see the module doc).
    `defer=False` (the executor's logs folder) uploads each file when it is closed, but a task's
    stats, which go up together with its completion marker, written right after them."""

    def __init__(self, path: str, defer: bool = True, **kwargs: Any):
        super().__init__(path, auto_mkdir=False, **kwargs)
        self.defer = defer

    # writes -------------------------------------------------------------------------------------
    def _staged(self, rel: str, local: str) -> None:
        key = (self.path, rel)
        old = _STAGED.get(key)
        if old and old != local:
            try:
                os.unlink(old)
            except OSError:
                pass
        if not self.defer and rel.startswith("completions/"):  # the task's stats and its marker go up together
            _STAGED[key], _OWED[key] = local, (self, local)
            publish(self.path)
            return
        if not self.defer and not rel.startswith("stats/"):
            self.fs.put_file(local, self._join(rel))
            os.unlink(local)
            _STAGED.pop(key, None)
            _OWED.pop(key, None)
            return
        _STAGED[key] = local
        _OWED[key] = (self, local)

    # reads --------------------------------------------------------------------------------------
    def _whole(self, rel: str) -> bytes | None:
        """The file's bytes in one request (None: larger than WHOLE, to be streamed)."""
        ahead = _FETCHED.pop((self.path, rel), None)
        if ahead is not None:
            return ahead
        local = _STAGED.get((self.path, rel))
        if local is not None:
            with open(local, "rb") as f:
                return f.read()
        p = self._join(rel)
        try:
            data = self.fs.cat_file(p, start=0, end=WHOLE)
        except FileNotFoundError:
            raise
        except OSError:  # e.g. a range on an empty object: read it whole
            return self.fs.cat_file(p)
        return data if len(data) < WHOLE else None

    def open(self, path, mode="rb", *args, compression=None, **kwargs):  # noqa: D102 - DataFolder.open
        from fsspec.compression import compr
        from fsspec.core import get_compression

        text = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
        comp = get_compression(path, compression) if compression else None
        if "r" in mode and "+" not in mode:
            data = self._whole(path)
            if data is None:
                return super().open(path, mode, *args, compression=compression, **text, **kwargs)
            f: Any = _Bytes(data, self._join(path))
            if comp:
                f = compr[comp](f, mode="rb")
            return io.TextIOWrapper(f, **text) if "b" not in mode else f
        if "a" in mode or "+" in mode:
            raise ValueError(f"the work folder writes whole files (mode {mode!r} asked for {path})")
        raw = _Staged(self, path)
        outer: Any = raw
        if comp:
            outer = compr[comp](outer, mode="wb")
        if "b" not in mode:
            outer = io.TextIOWrapper(outer, **text)
        return raw if outer is raw else _Chain(outer, raw)

    def open_files(self, paths, mode="rb", **kwargs):  # noqa: D102 - DataFolder.open_files
        """Every file read whole with its GETs sent together (MinHash's buckets read all signature files of a bucket)."""
        paths = list(paths)
        want = [p for p in paths if (self.path, p) not in _STAGED and (self.path, p) not in _FETCHED]
        if "r" not in mode or "b" not in mode or kwargs.get("compression") or len(want) < 2:
            return [self.open(p, mode=mode, **kwargs) for p in paths]
        got = self.fs.cat([self._join(p) for p in want])
        return [_Bytes(got[self._join(p)], self._join(p)) if p in want else self.open(p, mode=mode) for p in paths]

    def list_files(self, subdirectory: str = "", recursive: bool = True, glob_pattern: str | None = None,
                   include_directories: bool = False) -> list[str]:
        """datatrove's listing; the work folder's steps list a folder to read every file in it (the
        MinHash buckets, pairs and clusters, the dedup index), so the files listed are read right
        away, concurrently, when they add up to at most PREFETCH bytes (not in the logs folder)."""
        from glob import has_magic

        if any(r == self.path for r, _ in _OWED):  # this task's own files are listed too: they go up first
            publish(self.path)
        if glob_pattern and not has_magic(glob_pattern):
            glob_pattern = f"*{glob_pattern}"  # as datatrove: an extension
        kw = {"withdirs": True} if include_directories and not glob_pattern else {}
        found = (self.find(subdirectory, maxdepth=None if recursive else 1, detail=True, **kw) if not glob_pattern
                 else self.glob(self.fs.sep.join([subdirectory, glob_pattern]) if subdirectory else glob_pattern,
                                maxdepth=None if recursive else 1, detail=True))
        names = sorted(f for f, info in found.items() if include_directories or info["type"] != "directory")
        todo = [n for n in names if found[n]["type"] != "directory" and (self.path, n) not in _STAGED
                and (self.path, n) not in _FETCHED]
        if self.defer and len(todo) > 1 and sum(found[n].get("size") or 0 for n in todo) <= PREFETCH:
            got = self.fs.cat([self._join(n) for n in todo])
            _FETCHED.update(((self.path, n), got[self._join(n)]) for n in todo)
        return names

    # existence ----------------------------------------------------------------------------------
    def _head(self, rel: str) -> bool:
        if (self.path, rel) in _STAGED:
            return True
        p = self._join(rel)
        call = getattr(self.fs, "call_s3", None)
        if call is None:
            return self.fs.isfile(p)
        bucket, key, _ = self.fs.split_path(p)
        try:
            call("head_object", Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            return False

    def exists(self, path, **kwargs) -> bool:
        """True when the file `path` exists (one HEAD; the work folder's steps ask only about files)."""
        return self._head(path)

    def isfile(self, path) -> bool:
        return self._head(path)


class Publish(PipelineStep):
    """Last step of every job on a WorkFolder: the task's staged files go up, before datatrove marks it complete."""

    name = "📂 Work folder: publish"
    type = "📂 - IO"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        return self._run(data)

    def _run(self, data):
        if data:
            yield from data
        self.stat_update("published", value=publish())


def cleanup() -> None:
    """Remove this process's staging folder."""
    discard()
    if _DIR:
        shutil.rmtree(_DIR[0], ignore_errors=True)
        _DIR.clear()
