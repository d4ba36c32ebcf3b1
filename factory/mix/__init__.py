"""Mixes: tokenizing stage folders into shards (tokenize), the mix YAML (spec) and the plan of a mix
(plan)."""
