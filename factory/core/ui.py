"""Progress bars and summary tables (rich) shared by every stage.

On a terminal a progress bar redraws in place. Elsewhere (a Ray job's log, a pipe, CI) nothing
redraws, so the bar prints one plain line per task every `FACTORY_PROGRESS_EVERY_S` seconds
(default 15) and once at the end: count, rate, elapsed time, ETA and the stage's own fields.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from train.progress import clock, eta_s, every_s

console = Console(stderr=True)


class EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(clock(eta_s(task.completed, task.total, task.elapsed)), style="progress.remaining")


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(rate(task), style="progress.data.speed")


def rate(task: Task) -> str:
    per_s = task.completed / task.elapsed if task.elapsed else 0.0
    return f"{per_s:.3g} {task.fields.get('unit', 'it')}/s"


def plain_line(task: Task) -> str:
    """One log line for `task`: what a bar shows, in words."""
    pct = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
    total = f"/{task.total:g}" if task.total is not None else ""
    info = task.fields.get("info") or ""
    return (f"{task.description} {task.completed:g}{total}{pct} {rate(task)} elapsed {clock(task.elapsed)} "
            f"eta {clock(eta_s(task.completed, task.total, task.elapsed))}" + (f"  {info}" if info else ""))


class StageProgress(Progress):
    """A rich Progress that, when its console is not a terminal, logs plain lines instead of a bar."""

    def __init__(self, *columns: Any, every: float | None = None, **kw: Any):
        super().__init__(*columns, **kw)
        self.every = every_s() if every is None else every
        self.plain = not self.disable and not self.console.is_terminal
        if self.plain:
            self.live.transient = True  # the final lines below replace the bar drawn at the end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def log_lines(self) -> None:
        for task in self.tasks:
            self.console.print(Text(plain_line(task)), soft_wrap=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.log_lines()

    def start(self) -> None:
        super().start()
        if self.plain and self.every > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="progress-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        super().stop()
        if self.plain:
            self.log_lines()


def progress(**kw: Any) -> StageProgress:
    """A progress bar with count, rate, the task's `info` field (docs/s, tok/s, cost), elapsed
    time and ETA. Give each task a `unit` field (default "it") and an `info` field."""
    return StageProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        EtaColumn(),
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


def human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"
