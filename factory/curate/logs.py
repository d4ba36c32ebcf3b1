"""datatrove's own logs during curation go to `datatrove.log` in the stage folder, not the terminal.

datatrove (loguru) logs every task's pipeline and stats to stderr: ~800 lines for 26 documents.
While a curation runs, this process's stderr is a file in the stage folder (written at the end on
an object store) and rich's console keeps the real stderr for the progress bar and the summary.
Each task's full log also stays where datatrove puts it (`<work>/logs/<job>/logs/task_*.log`);
tasks in other processes print only their errors (QuietLocalExecutor here, `local_rank=1` on Ray).
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Callable, Iterator

import multiprocess
from datatrove.executor.local import LocalPipelineExecutor

from factory.core.compat import rich_console_file

LOG = "datatrove.log"


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor with every task's console output at ERROR level (datatrove
    prints INFO for the first worker slot); each task's full log is still in logs/task_*.log."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        from factory.curate.workfolder import discard

        discard()  # what an earlier failed task of this process staged never goes up (workfolder.py)
        try:
            return super()._run_for_rank(rank, 1, node_rank)
        finally:
            if multiprocess.parent_process() is not None:  # a pool worker: its "n/N tasks completed" too
                from loguru import logger

                logger.remove()
                logger.add(sys.stderr, level="ERROR")


@contextlib.contextmanager
def to_stage_file(stage_url: str) -> Iterator[str]:
    """Within the block, stderr (and so datatrove's loguru sink) writes to `stage_url/datatrove.log`;
    the console of factory.core.ui keeps the stderr it had. Yields the log's URL."""
    from loguru import logger

    from factory.core.stage import is_url, put_bytes
    from factory.core.ui import console

    url = f"{stage_url.rstrip('/')}/{LOG}"
    sink = io.StringIO() if is_url(url) else open(url, "a", buffering=1, encoding="utf-8")
    real, pinned = sys.stderr, rich_console_file(console)  # None: the console follows sys.stderr
    console.file = pinned or real
    logger.remove()
    logger.add(sink, level="DEBUG")
    ok = False
    try:
        with contextlib.redirect_stderr(sink):
            yield url
        ok = True
    finally:
        logger.remove()
        logger.add(real)
        console.file = pinned
        if isinstance(sink, io.StringIO):
            try:
                put_bytes(url, sink.getvalue().encode())
            except Exception:  # noqa: BLE001 - a failing store must not hide the run's own error
                if ok:
                    raise
        else:
            sink.close()


@contextlib.contextmanager
def shown(stage_url: str, jobs: list, n_docs: int) -> Iterator[Callable[[str, float], None]]:
    """A progress line over the tasks of the jobs to run while datatrove's logs go to the stage's
    `datatrove.log`; yields `done(job_name, seconds)`, to call as each job finishes."""
    from factory.core.ui import progress

    todo = [j for j in jobs if not j.skip]
    names = [j.name for j in todo]
    with progress() as bar:  # started first: on a terminal it proxies stderr, which the block then replaces
        task = bar.add_task("curate", total=sum(j.tasks for j in todo), unit="tasks",
                            info=f"{n_docs} docs; {names[0] if names else '-'}")

        def done(name: str, secs: float) -> None:
            i = names.index(name)
            nxt = f"; {names[i + 1]}" if i + 1 < len(names) else ""
            bar.update(task, advance=todo[i].tasks, info=f"{n_docs} docs; {name} took {secs:.1f}s{nxt}")

        with to_stage_file(stage_url):
            yield done
