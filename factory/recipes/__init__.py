"""Phi-4-style recipes as data: YAML + Jinja2 templates, run step by step against a teacher.

The names below load on first use, so reading a recipe spec (`factory.recipes.spec`, as the
curation leakage filter does in every worker) does not import the engine and its sympy checks.
"""

from importlib import import_module

_EXPORTS = {"Recipe": "engine", "RecipeResult": "engine", "list_recipes": "engine", "load_recipe": "engine",
            "seed_context": "engine", "ParseError": "parse"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"factory.recipes.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'factory.recipes' has no attribute {name!r}")
