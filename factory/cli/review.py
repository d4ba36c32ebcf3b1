"""`factory review FOLDER`: a local page of what a run made: the funnel, every document beside its
seed with what each check saw, and labels by keyboard (saved to FOLDER/labels.jsonl)."""

from __future__ import annotations

import os
from typing import Optional

import typer

from factory.core.ui import console


def review(
    folder: str = typer.Argument(..., help="a run folder (like runs/demo) or a generate/curate stage folder (any fsspec URL)"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback needs the token the server prints"),
    port: int = typer.Option(8765, help="port to listen on (0: a free one)"),
    open_: bool = typer.Option(False, "--open", help="open the page in a browser"),
    html: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML file here instead of serving"),
    limit: int = typer.Option(200, help="with --html: how many documents to embed"),
    reviewer: Optional[str] = typer.Option(None, help="whose labels these are (default: $USER)"),
    labels: Optional[str] = typer.Option(None, help="labels file (default: FOLDER/labels.jsonl; needed for a remote folder)"),
) -> None:
    """Review a run's documents beside their seeds and label them by keyboard."""
    import asyncio

    from factory.core.errors import FactoryError
    from factory.review.server import Review, Server, serve_forever, write_html

    who = reviewer or os.environ.get("USER") or os.environ.get("USERNAME") or "reviewer"
    if not who.strip() or len(who) > 100:
        raise FactoryError("a reviewer name is 1 to 100 characters", field="--reviewer", fix="give --reviewer NAME")
    rv = Review(folder, who, labels)
    f = rv.index.funnel()["total"]
    lab = rv.labels()
    console.print(f"{rv.folder}: {f['seeds']} seeds -> {f['requests']} requests -> {f['documents']} documents -> "
                  f"{f['kept'] if f['kept'] is not None else '(not curated)'} kept")
    if lab.bad_lines:
        shown = ", ".join(map(str, lab.bad_lines[:20])) + (", ..." if len(lab.bad_lines) > 20 else "")
        console.print(f"[yellow]{rv.store.path}: {len(lab.bad_lines)} corrupt line(s) skipped (line {shown}); "
                      f"the file is left as it is[/yellow]")
    if html:
        n = write_html(rv, html, limit)
        console.print(f"wrote {html} ({n} of {len(rv.index)} entries embedded)")
        return
    server = Server(rv, host, port)

    def ready(url: str) -> None:
        where = rv.store.path if rv.store else "read-only (give --labels PATH)"
        console.print(f"reviewer {who}; labels: {where}")
        if server.token:
            console.print(f"[yellow]bound to {host}: every request needs the token in this URL[/yellow]")
        console.print(f"serving {url}  (Ctrl-C stops)")
        print(url, flush=True)  # on stdout too, for scripts
        if open_:
            import webbrowser

            webbrowser.open(url)

    try:
        asyncio.run(serve_forever(server, ready))
    except KeyboardInterrupt:
        console.print("stopped")


def register(app: typer.Typer) -> None:
    app.command("review")(review)
