"""Mix search: proxy runs over a region of share vectors (design), a regression from shares to the
target (fit), the best feasible mix and its validation (run), and the report (report). The search
file's schema is in spec."""

from factory.ablate.search.run import search
from factory.ablate.search.spec import SearchConfig, load

__all__ = ["SearchConfig", "load", "search"]
