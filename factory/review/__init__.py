"""`factory review FOLDER`: what a run made, document by document beside its seed, with labels.

data.py builds a light index of a run's documents (ids, recipe, teacher, status, reason, where each
row lives) and reads rows lazily; labels.py keeps reviewers' labels in an append-only labels.jsonl;
server.py serves the page and its JSON endpoints (aiohttp) or writes a self-contained HTML file.
"""
