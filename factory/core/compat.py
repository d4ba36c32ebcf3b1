"""Every private API of a third-party library the product uses, in one place.

Each entry reaches into a library's internals because no public API does the job; each is pinned by
tests/foundation/test_compat.py against the versions named in CHECKED, so a release that moves one
fails there, naming the library and the entry, not somewhere deep in a run. Imports are lazy: `train/`
imports this module on a host with torch alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the library versions these entries were checked against (the tests say which entry broke on which version)
CHECKED = {"ray": "2.60.0", "torch": "2.11-2.13", "datatrove": "0.10.1", "rich": "15.0.0"}


def ray_package_working_dir(working_dir: str | Path, target: Path, excludes: list[str], include_gitignore: bool) -> Path:
    """Zip a job's working dir with Ray's own packer (its .gitignore/.rayignore rules and default excludes).
    Ray's Job SDK has no public call that packs a folder without uploading it."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    create_package(str(working_dir), target, include_gitignore=include_gitignore,
                   excludes=ray_constants.get_runtime_env_default_excludes() + list(excludes))
    return target


def ray_reload_auth() -> None:
    """Make an imported, unconnected Ray read RAY_AUTH_MODE and its token again (it caches both at import)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def dcp_fsspec_writer(path: str, **kw: Any) -> Any:
    """torch DCP's writer for an fsspec URL (torch has it only in a private module)."""
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    return FsspecWriter(path, **kw)


def dcp_fsspec_reader(path: str) -> Any:
    """torch DCP's reader for an fsspec URL."""
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader(path)


# datatrove's executors run one rank with this method; subclasses override it (logging, Ray sessions) and
# the Ray pool calls it for each task (datatrove's own Ray executor submits whole executors instead)
RUN_FOR_RANK = "_run_for_rank"


def datatrove_run_rank(executor: Any, rank: int, world_size: int = 1) -> Any:
    """Run one rank of a datatrove executor's pipeline, with its logging, stats and completion marker."""
    return getattr(executor, RUN_FOR_RANK)(rank, world_size)


def fasttext_loaded(model: Any) -> bool:
    """Whether datatrove's lazily loaded fastText model (a FastTextLID/`model` wrapper) has loaded."""
    return getattr(model, "_model", None) is not None


def rich_console_file(console: Any) -> Any:
    """The file a rich Console was pinned to, or None when it follows sys.stdout/sys.stderr."""
    return console._file
