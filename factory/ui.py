"""Progress bars and summary tables (rich) shared by every stage."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


def progress(**kw: Any) -> Progress:
    """A progress bar with count, rate fields, elapsed time and ETA; use `fields` for docs/s, tok/s, cost."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        **kw,
    )


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    return t


@contextlib.contextmanager
def timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Record the wall time of a block under `name`."""
    t0 = time.time()
    console.rule(f"[bold cyan]{name}")
    try:
        yield
    finally:
        timings[name] = round(time.time() - t0, 2)
