"""Curation: datatrove filters, synthetic-specific filters, dedup and decontamination, on one
machine (LocalPipelineExecutor) or on Ray (RayPipelineExecutor) with the same output.

The stage body is `stage.py` (`run(cfg) -> manifest`); the config `config.py`; the filters, their
config classes and their order `registry.py`; the jobs `pipeline.py`.
"""

from factory.curate.config import CurateConfig, load
from factory.curate.stage import run

__all__ = ["CurateConfig", "load", "run"]
