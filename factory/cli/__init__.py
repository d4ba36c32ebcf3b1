"""The `factory` command: one subcommand per stage, registered by the modules in this package."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from factory.errors import FactoryError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Synthetic pretraining data factory.")

# One module per command group, in data-flow order. Each defines `register(app)`.
GROUPS = ["seeds", "teacher", "recipes", "generate", "curate", "tokenize", "mix", "train", "evaluate", "ablate", "cluster", "demo"]


def _register() -> None:
    for name in GROUPS:
        importlib.import_module(f"factory.cli.{name}").register(app)


_register()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except FactoryError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
