"""Phi-4-style recipes as data: YAML + Jinja2 templates, run step by step against a teacher."""

from factory.recipes.engine import Recipe, RecipeResult, list_recipes, load_recipe, seed_context
from factory.recipes.parse import ParseError

__all__ = ["Recipe", "RecipeResult", "load_recipe", "list_recipes", "seed_context", "ParseError"]
